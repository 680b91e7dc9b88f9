"""Intake: the send-job contract, its validation and the HTTP API."""
