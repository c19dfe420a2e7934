//! Placeholder; the agent lands with issue 6.

fn main() {}
