"""sendonce: exactly-once outbound campaign messaging. The library every function calls."""
