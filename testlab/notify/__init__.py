"""Notifications leave the lab: e-mails over SMTP and JSON webhooks signed with HMAC-SHA256, sent by
the engine from the outbox in the database (testlab/services/notifications.py)."""
