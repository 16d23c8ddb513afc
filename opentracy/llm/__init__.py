"""The LLM gateway: every model call the platform makes goes through here."""
