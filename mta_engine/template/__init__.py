"""Message content: building RFC 5322 messages from inject specs and rendering templates."""
