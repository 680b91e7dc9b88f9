"""Dispatch: handing rendered deliveries to channels, with retries."""
