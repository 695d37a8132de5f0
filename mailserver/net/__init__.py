"""Transport plumbing shared by the SMTP and IMAP listeners (no protocol knowledge)."""
