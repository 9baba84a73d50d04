"""The data model: job states, models, the state writer, leases and analytics."""
