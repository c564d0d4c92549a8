//! The `erofs-fuse` command: parses arguments and runs the command
//! (`cli::args` holds the arguments, `cli` what each command does).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Reads of files that shrink under a map fail instead of killing us.
    erofs_fuse::fault::install();
    let args = cli::args::helper_form(std::env::args_os());
    match cli::run(cli::args::Cli::parse_from(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("erofs-fuse: {err}");
            ExitCode::FAILURE
        }
    }
}
