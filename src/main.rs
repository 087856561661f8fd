fn main() -> std::process::ExitCode {
    precert::cli::main()
}
