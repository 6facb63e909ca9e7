"""The worker tier: loads models from a repository, batches requests and runs them on a device."""
