"""What a run leaves behind: status.json during the run, then the package with full provenance."""
