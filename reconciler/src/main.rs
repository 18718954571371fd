//! The `hadron` command: a thin layer over the library.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hadron::cli::{self, Format};

/// Hadron: a git-driven reconciler for AI-agent change requests.
///
/// People commit `requests/<name>.yaml` to a control repo; Hadron runs agents
/// on the target repos stage by stage and commits the outcome back as
/// `status/<name>.yaml`.
#[derive(Parser)]
#[command(name = "hadron", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a control repo folder: YAML syntax, fields, names, references.
    ///
    /// Prints `path:line:col: error[Code]: message` with a `help:` line per
    /// problem and a summary. Exit status: 0 when clean (warnings allowed),
    /// 1 when any error, 2 when the folder cannot be read.
    Validate {
        /// The control repo folder (a checkout or any folder with hadron.yaml,
        /// agents/, requests/ …).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// `text` for people, `json` for CI and editors.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write the JSON Schema of every kind (for editors and CI).
    Schema {
        /// Folder to write `<kind>.schema.json` files into.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Write nothing; exit 1 when a file there is missing or stale.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let code = match args.command {
        Command::Validate { dir, format } => cli::validate(&dir, format, &mut io::stdout(), &mut io::stderr()),
        Command::Schema { out, check } => match cli::schema(&out, check, &mut io::stdout()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error[{}]: {e}", e.reason());
                2
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
