//! `bulkhead template ls|rm|build`: the templates container VMs are restored from.

use super::{io, usage, Result};
use crate::cli::{ListFormat, TemplateCommand};
use crate::config::{Config, VmSize};
use crate::template::Templates;

pub fn run(cmd: &TemplateCommand) -> Result<()> {
    let config = Config::load()?;
    let templates = Templates::new(&config.template_dir);
    match cmd {
        TemplateCommand::Ls { format } => list(&templates, *format),
        TemplateCommand::Rm { keys, all } => {
            let keys: Vec<String> = if *all {
                templates.list()?.into_iter().map(|t| t.key).collect()
            } else if keys.is_empty() {
                return Err(usage(
                    "template rm: name a template (see template ls) or --all",
                ));
            } else {
                keys.clone()
            };
            for key in &keys {
                templates.remove(key)?;
                println!("{key}");
            }
            Ok(())
        }
        TemplateCommand::Build {
            vcpus,
            memory_mib,
            force,
        } => {
            let size = VmSize {
                vcpus: vcpus.unwrap_or(config.vcpus),
                memory_mib: memory_mib.unwrap_or(config.memory_mib),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("start a runtime"))?;
            let (key, dir) = runtime.block_on(crate::vm::build_template(&config, &size, *force))?;
            println!("{key} {}", dir.display());
            Ok(())
        }
    }
}

fn list(templates: &Templates, format: ListFormat) -> Result<()> {
    let all = templates.list()?;
    if format == ListFormat::Json {
        let rows: Vec<_> = all
            .iter()
            .map(|t| serde_json::json!({"key": t.key, "dir": t.dir, "meta": t.meta}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("KEY                               VCPUS  MEMORY  PROFILE   STORED   MADE IN  KERNEL");
    for t in all {
        match &t.meta {
            Some(m) => println!(
                "{:<32}  {:>5}  {:>6}  {:<8}  {:>6}  {:>6.1}s  {}",
                t.key,
                m.recipe.vcpus,
                format!("{}M", m.recipe.memory_mib),
                m.recipe.profile,
                format!("{}M", m.memory_bytes >> 20),
                m.build_secs,
                m.recipe.kernel.display()
            ),
            None => println!("{:<32}  (no meta.json)", t.key),
        }
    }
    Ok(())
}
