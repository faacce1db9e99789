"""Framework core: settings, validation, secrets, SSH connection and the runbook shell."""
