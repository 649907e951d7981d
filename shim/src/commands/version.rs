//! `bulkhead --version`, shaped like runc's (engines parse the first line).

pub fn run() {
    println!("bulkhead version {}", env!("CARGO_PKG_VERSION"));
    println!("spec: {}", crate::state::OCI_VERSION);
}
