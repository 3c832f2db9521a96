"""The job pattern every service follows for long work: records, stores, runners."""
