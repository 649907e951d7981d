//! `bulkhead list`: containers under --root, as a table, JSON, or ids only.

use super::{Ctx, Result};
use crate::cli::{ListArgs, ListFormat};

pub fn run(ctx: &Ctx, args: &ListArgs) -> Result<()> {
    let states = ctx.store.list()?;
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match args.format {
        ListFormat::Json => {
            let all: Vec<_> = states.iter().map(|s| s.oci_json()).collect();
            println!("{}", serde_json::Value::Array(all));
        }
        ListFormat::Table => print!("{}", table(&states)),
    }
    Ok(())
}

fn table(states: &[crate::state::State]) -> String {
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        .map(String::from)
        .to_vec()];
    for s in states {
        let v = s.oci_json();
        rows.push(vec![
            s.id.clone(),
            v["pid"].to_string(),
            v["status"].as_str().unwrap_or("").to_string(),
            s.bundle.display().to_string(),
            s.created.clone(),
            if s.owner.is_empty() {
                "root".into()
            } else {
                s.owner.clone()
            },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}
