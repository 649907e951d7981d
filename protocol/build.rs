//! Generates the protobuf messages of `proto/*.proto` into `OUT_DIR` with ttrpc-codegen's
//! pure-Rust parser (no `protoc` needed). The agent and client speak the ttrpc wire format with
//! our own small framing code (src/frame.rs); the generated ttrpc stubs (`agent_ttrpc.rs`) are
//! only used by a test that checks wire compatibility with the `ttrpc` crate.
//!
//! Generated files start with inner attributes (`#![allow(...)]`), which `include!` cannot take,
//! so they (and inner doc comments) are stripped here and the including modules carry the allows instead.

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: [&str; 2] = ["proto/agent.proto", "proto/ttrpc.proto"];
const GENERATED: [&str; 3] = ["agent.rs", "ttrpc.rs", "agent_ttrpc.rs"];

fn main() -> std::io::Result<()> {
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    Codegen::new()
        .out_dir(&out)
        .inputs(PROTOS)
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            gen_mod: false,
            ..Default::default()
        })
        // No reflection tables: a smaller static agent, and nothing here needs them.
        .rust_protobuf_customize(ProtobufCustomize::default().lite_runtime(true))
        .run()?;
    for name in GENERATED {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path)?;
        let kept: String = text
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("#![") && !line.starts_with("//!")
            })
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&path, kept)?;
    }
    Ok(())
}
