"""The arbup CLI and the code that starts and reads upgrades."""
