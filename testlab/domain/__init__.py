"""Pure domain rules: statuses, the roll-up, and the definition-file parsers. No I/O beyond reading files."""
