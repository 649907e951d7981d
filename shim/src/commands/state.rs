//! `bulkhead state`: the OCI state as indented JSON.

use super::{Ctx, Result};

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let (st, _) = ctx.load(id)?;
    let text = serde_json::to_string_pretty(&st.oci_json()).unwrap_or_default();
    println!("{text}");
    Ok(())
}
