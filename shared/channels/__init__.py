"""One package per channel: adapter, error table, webhook parser and signature check,
read-back and content rules. See ``shared.channels.spec`` and the README's "How to add a
channel"."""
