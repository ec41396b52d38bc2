//! `clusterctl config ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

/// The result of checking one file, as `--json` prints it.
#[derive(Debug, Serialize)]
struct FileReport {
    file: String,
    ok: bool,
    errors: Vec<conf::Diagnostic>,
}

pub(crate) fn check(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let reports: Vec<FileReport> = files
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            let errors = match conf::load(path) {
                Ok(_) => Vec::new(),
                Err(conf::LoadError::Invalid(d)) => d.0,
                Err(e @ conf::LoadError::Read { .. }) => vec![conf::Diagnostic {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    key: String::new(),
                    message: format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                }],
            };
            FileReport {
                ok: errors.is_empty(),
                file,
                errors,
            }
        })
        .collect();
    let all_ok = reports.iter().all(|r| r.ok);
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            if r.ok {
                println!("{}: ok", r.file);
            } else {
                for e in &r.errors {
                    println!("{e}");
                }
            }
        }
        if !all_ok {
            let n: usize = reports.iter().map(|r| r.errors.len()).sum();
            eprintln!("{n} error{} found", if n == 1 { "" } else { "s" });
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn schema() -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&conf::json_schema())?);
    Ok(ExitCode::SUCCESS)
}
