use clap::Parser;
use upload_reconciler::{app, cli::Cli, redact, telemetry};

fn main() {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.global);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reconcile: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reconcile: {}", redact::text(&e.to_string()));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
