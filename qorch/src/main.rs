//! The `qorch` command; everything is in the library's [`qorch::cli`].

fn main() -> std::process::ExitCode {
    qorch::cli::main()
}
