"""Each channel's part of the fake provider: its wire format, its answers, its rules."""
