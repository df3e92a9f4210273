//! The command line: one binary for every role.

use anyhow::Context;
use clap::{Parser, Subcommand};
use follow_service::{
    app::{self, App, Background, Role},
    config::Config,
    db, graphql, http, seed, telemetry,
};

/// jemalloc rather than glibc's malloc: on the `isFollowing` miss path (cache off) it took the server's
/// CPU per request from 226 to 195 µs and `{ __typename }` from 100 to 78 µs (medians of three
/// alternated runs; mimalloc: 235 and 92 µs). See docs/notes/miss-path-profile.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "follow-service",
    version,
    about = "GraphQL API for the follow graph of a social product"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (and, unless FOLLOW_RUN_CONSUMER=false, the event consumer and relay). The default.
    Serve,
    /// Run only the event consumer and outbox relay.
    Worker,
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Fill the database with a demo graph (power-law follower counts) and print tokens to explore it.
    Seed {
        /// Number of users.
        #[arg(long, default_value_t = 5_000)]
        users: i64,
        /// Mean number of users each user follows.
        #[arg(long, default_value_t = 20)]
        mean_following: usize,
        /// RNG seed: the same seed builds the same graph.
        #[arg(long, default_value_t = 42)]
        rng_seed: u64,
    },
    /// Print a bearer token (JWT) for a user.
    Token {
        /// The user id the token speaks for.
        #[arg(long)]
        user: i64,
        /// Give the token the admin role (may call upsertUser).
        #[arg(long)]
        admin: bool,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
    /// Compare every user's counts with the edges, print each difference, and with --fix repair them.
    Reconcile {
        /// Repair the differences (safe while the service runs).
        #[arg(long)]
        fix: bool,
    },
    /// Print the GraphQL schema (SDL); with --write, write it to schema.graphql.
    Schema {
        /// Write schema.graphql (for clients) and subgraph.graphql (for a federation router) in the
        /// current directory instead of printing the former.
        #[arg(long)]
        write: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Schema { write } = command {
        return print_schema(write);
    }
    let config = Config::from_env()?;
    telemetry::init(config.log_json);
    match command {
        Command::Serve => serve(config).await,
        Command::Worker => worker(config).await,
        Command::Migrate => {
            db::ensure_database(&config.database_url).await?;
            let applied = db::run_migrations(&config.database_url).await?;
            println!("{applied} migration(s) applied");
            Ok(())
        }
        Command::Seed {
            users,
            mean_following,
            rng_seed,
        } => {
            anyhow::ensure!(users >= 2, "--users must be at least 2");
            anyhow::ensure!(mean_following >= 1, "--mean-following must be at least 1");
            let app = App::start(config).await?;
            let plan = seed::SeedPlan {
                users,
                mean_following,
                exponent: 1.0,
                rng_seed,
            };
            let started = std::time::Instant::now();
            let report = seed::seed(&app.db, plan).await?;
            println!(
                "seeded {} new users and {} new follows in {:.1?} (counts set for {} users)",
                report.users_created,
                report.edges_created,
                started.elapsed(),
                report.counts_fixed
            );
            let viewer = (users / 2).max(2);
            println!(
                "\nExplore at http://{}/graphql with this header (viewer: user {viewer}):",
                app.config.listen
            );
            println!(
                "  {{\"Authorization\": \"Bearer {}\"}}",
                app.jwt.issue(viewer, false, 24 * 3600)?
            );
            println!("An admin token (may call upsertUser), for user 1:");
            println!(
                "  {{\"Authorization\": \"Bearer {}\"}}",
                app.jwt.issue(1, true, 24 * 3600)?
            );
            Ok(())
        }
        Command::Token { user, admin, hours } => {
            anyhow::ensure!(user > 0, "--user must be a positive user id");
            let keys = follow_service::auth::JwtKeys::new(&config.jwt_secret)
                .requiring(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
            println!("{}", keys.issue(user, admin, hours * 3600)?);
            Ok(())
        }
        Command::Reconcile { fix } => reconcile(config, fix).await,
        Command::Schema { .. } => Ok(()),
    }
}

/// Prints the clients' SDL, or writes it to `schema.graphql` and the subgraph's to `subgraph.graphql`;
/// needs no configuration or server.
fn print_schema(write: bool) -> anyhow::Result<()> {
    let sdl = graphql::sdl();
    if write {
        std::fs::write("schema.graphql", &sdl).context("writing schema.graphql")?;
        std::fs::write("subgraph.graphql", graphql::subgraph_sdl())
            .context("writing subgraph.graphql")?;
        println!("wrote schema.graphql and subgraph.graphql");
    } else {
        print!("{sdl}");
    }
    Ok(())
}

fn warn_if_development_secret(config: &Config) {
    if config.uses_development_secret() {
        tracing::warn!(
            "FOLLOW_JWT_SECRET is not set: tokens are signed with the PUBLIC development secret. \
             Never run like this in production (FOLLOW_ENV=production refuses to)."
        );
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    warn_if_development_secret(&config);
    if !config.rate.enabled {
        tracing::warn!(
            "FOLLOW_RATE_LIMIT=off: no rate limit applies to any client. Use this for load benchmarks only."
        );
    }
    let app = App::start(config).await?;
    let background = app.spawn_background(Background::of(Role::Api, &app.config));
    let listener = tokio::net::TcpListener::bind(app.config.listen)
        .await
        .with_context(|| format!("binding {}", app.config.listen))?;
    tracing::info!("GraphiQL at http://{}/graphql", listener.local_addr()?);
    let operators = serve_operators(&app).await?;
    let closing = app.closing.clone();
    let limits = http::server::ServerLimits::from_config(&app.config);
    http::server::serve(listener, http::router(app.clone()), limits, async move {
        if let Err(err) = app::shutdown_signal().await {
            tracing::error!(error = %err, "signal handling failed");
        }
        closing.send_replace(true);
    })
    .await?;
    if let Some(operators) = operators {
        operators.abort();
    }
    background.stop().await;
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `FOLLOW_METRICS_LISTEN` when it is set: the
/// operators' port, for Prometheus to scrape API instances and workers alike.
async fn serve_operators(app: &App) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(address) = app.config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding FOLLOW_METRICS_LISTEN {address}"))?;
    tracing::info!("metrics at http://{address}/metrics (not on the public listener)");
    let router = http::operator_router(app.clone());
    Ok(Some(tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    })))
}

async fn worker(config: Config) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    let background = app.spawn_background(Background::of(Role::Worker, &app.config));
    let operators = serve_operators(&app).await?;
    tracing::info!("worker running: event consumer and outbox relay");
    app::shutdown_signal().await?;
    if let Some(operators) = operators {
        operators.abort();
    }
    background.stop().await;
    Ok(())
}

async fn reconcile(config: Config, fix: bool) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    let drift = follow_service::reconcile::reconcile(&app.db, &app.caches, fix).await?;
    for d in &drift {
        println!(
            "user {}: followers {} -> {}, following {} -> {}",
            d.user_id,
            d.stored_followers,
            d.expected_followers,
            d.stored_following,
            d.expected_following
        );
    }
    match (drift.len(), fix) {
        (0, _) => println!("every count matches its edges"),
        (n, true) => println!("{n} user(s) repaired"),
        (n, false) => {
            println!("{n} user(s) differ; run `reconcile --fix` to repair them");
            std::process::exit(1);
        }
    }
    Ok(())
}
