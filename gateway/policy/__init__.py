"""Delivery policy: may this recipient get this message on this channel, now?"""
