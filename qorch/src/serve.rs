//! `qorch serve`: the read-only HTTP API of `qorch-api` over a store (and the run directories
//! of `<out>/runs`), on loopback by default; any other address needs a bearer token.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::history::StoreAt;

/// `qorch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    at: StoreAt,
    /// Where to listen (loopback by default; another address needs a token).
    #[arg(long, default_value_t = qorch_api::DEFAULT_BIND)]
    bind: SocketAddr,
    /// The bearer token every request must carry (default: the QORCH_API_TOKEN environment
    /// variable; prefer it, a command line is visible to other users).
    #[arg(long)]
    token: Option<String>,
}

/// `qorch serve`: serves until Ctrl-C or SIGTERM, then lets requests in flight finish.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = args.at.dir()?;
    let mut config = qorch_api::ApiConfig::new(&store)
        .with_reports(&args.at.out)
        .with_bind(args.bind);
    if let Some(token) = &args.token {
        config = config.with_token(token.clone());
    }
    let bound = qorch_api::bind(&config)
        .await
        .with_context(|| format!("cannot serve the store {}", store.display()))?;
    println!(
        "serving http://{}/api/v1/ (store {}; Ctrl-C stops)",
        bound.local_addr(),
        store.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    bound.serve(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
