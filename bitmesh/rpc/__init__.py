"""The gRPC edge shared by every service: server factory, errors, conversions."""
