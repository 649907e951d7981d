//! `bulkhead-vmm`: run one micro-VM by hand.

fn main() {}
