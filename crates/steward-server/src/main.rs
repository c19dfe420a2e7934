//! `steward-server`: run one Steward service (as deployed on Kubernetes), run migrations, or run
//! everything at once on SQLite with `dev`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use steward_runtime::config::Config;
use steward_runtime::service::system_clock;
use steward_server::bootstrap::{first_organization, Bootstrapped, FirstOrganization};
use steward_server::{bootstrap_dev, dev_config, run, set_password_link, ServiceKind};

/// Steward: the administration plane's gRPC services.
#[derive(Debug, Parser)]
#[command(name = "steward-server", version, about)]
struct Cli {
    /// TOML configuration file; `STEWARD_*` environment variables override it
    /// (nested keys joined by `__`, e.g. `STEWARD_SERVER__LISTEN`).
    #[arg(long, global = true, env = "STEWARD_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the auth service (sign-in, sessions, MFA, JWKS).
    Auth,
    /// Serve the admin service (organizations, administrators, billing, audit).
    Admin,
    /// Serve the command-authorization service (commands, grants, runs, systems, agents).
    Commands,
    /// Apply database migrations and exit (the Kubernetes migration job).
    Migrate {
        /// Which service's migrations.
        #[arg(long, value_enum, default_value_t = Which::All)]
        service: Which,
    },
    /// Create the first organization and invite its owner, unless an organization exists.
    ///
    /// Calls OrganizationService.CreateOrganization on the admin service's internal listener
    /// (internal.admin_url, with internal.service_token and the internal TLS settings of the
    /// configuration); the auth service then mails the owner a set-password link. Once any
    /// organization exists it does nothing: reruns never create a second organization or send
    /// a second email. Exit status: 0 when the organization was created or one already exists,
    /// 1 when the admin service refused or stayed unreachable for --wait-secs (or the settings
    /// to reach it are broken), 2 for an invalid --organization or --owner-email (or an
    /// unreadable configuration file).
    Bootstrap {
        /// Display name of the organization (1 to 200 characters).
        #[arg(long)]
        organization: String,
        /// Email of its owner, an Administrator with billing access, who is mailed the link.
        #[arg(long)]
        owner_email: String,
        /// How long to retry while the admin service is unreachable (0: try once).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Everything in one process on SQLite, for trying Steward out and for development.
    Dev {
        /// Address of the public listener (every public service, gRPC-Web).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Address of the internal listener (every service, the `*InternalService`s too, with
        /// the service credential). Default: the port after `--listen`'s (a free one with 0).
        #[arg(long)]
        internal_listen: Option<SocketAddr>,
        /// Where the SQLite files, the dev signing key and the mail folder live.
        #[arg(long, default_value = "./.steward")]
        data_dir: PathBuf,
        /// Email of the first organization's owner, created on first start.
        #[arg(long, default_value = "owner@example.com")]
        owner_email: String,
        /// Serve TLS with a local CA and certificate generated under `{data-dir}/tls`.
        #[arg(long)]
        tls: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    All,
    Auth,
    Admin,
    Commands,
}

impl Which {
    fn kinds(self) -> Vec<ServiceKind> {
        match self {
            Which::All => ServiceKind::ALL.to_vec(),
            Which::Auth => vec![ServiceKind::Auth],
            Which::Admin => vec![ServiceKind::Admin],
            Which::Commands => vec![ServiceKind::Commands],
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("steward-server: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry =
        match steward_runtime::telemetry::init(&config.telemetry, cli.command.service_name()) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("steward-server: {err}");
                return ExitCode::from(2);
            }
        };
    let code = match execute(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is_usage() => {
            eprintln!("steward-server: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            tracing::error!(error = %err, "steward-server failed");
            eprintln!("steward-server: {err}");
            ExitCode::FAILURE
        }
    };
    // The last spans and metrics (those of the shutdown itself included) go out before exit.
    if let Err(err) = telemetry.shutdown().await {
        eprintln!("steward-server: {err}");
    }
    code
}

impl Command {
    /// `service.name` of the process's telemetry unless configured.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Auth => "steward-auth",
            Command::Admin => "steward-admin",
            Command::Commands => "steward-commands",
            Command::Migrate { .. } => "steward-migrate",
            Command::Bootstrap { .. } => "steward-bootstrap",
            Command::Dev { .. } => "steward-dev",
        }
    }
}

async fn execute(command: Command, config: Config) -> Result<(), steward_server::ServerError> {
    let single = |kind: ServiceKind, config: Config| async move {
        let listeners = steward_server::bind(&config).await?;
        run(config, &[kind], system_clock(), listeners, steward_runtime::server::shutdown_signal())
            .await
    };
    match command {
        Command::Auth => single(ServiceKind::Auth, config).await,
        Command::Admin => single(ServiceKind::Admin, config).await,
        Command::Commands => single(ServiceKind::Commands, config).await,
        Command::Migrate { service } => steward_server::migrate(&config, &service.kinds()).await,
        Command::Bootstrap { organization, owner_email, wait_secs } => {
            let wanted = FirstOrganization::new(&organization, &owner_email)?;
            steward_server::validate(&config, &[])?;
            match first_organization(&config, &wanted, Duration::from_secs(wait_secs)).await? {
                Bootstrapped::Created(org) => println!(
                    "steward-server bootstrap: created organization {:?} ({}); {} is mailed a \
                     link to set the owner's password",
                    org.display_name,
                    org.name,
                    wanted.owner_email()
                ),
                Bootstrapped::Existing(org) => println!(
                    "steward-server bootstrap: an organization already exists ({:?}, {}); \
                     nothing created, no email sent",
                    org.display_name, org.name
                ),
            }
            Ok(())
        }
        Command::Dev { listen, internal_listen, data_dir, owner_email, tls } => {
            let public = tokio::net::TcpListener::bind(listen).await?;
            let addr = public.local_addr()?;
            // Next to the public port unless named: 50052 beside 50051, any free one beside 0.
            let internal_listen = internal_listen.unwrap_or_else(|| {
                let port = match listen.port() {
                    0 => 0,
                    port => port.checked_add(1).unwrap_or(0),
                };
                SocketAddr::new(listen.ip(), port)
            });
            let internal = tokio::net::TcpListener::bind(internal_listen).await?;
            let internal_addr = internal.local_addr()?;
            let health = steward_server::bind_optional(config.server.health_listen).await?;
            let metrics = steward_server::bind_optional(config.telemetry.metrics_listen).await?;
            let tls =
                if tls { Some(steward_server::dev_tls::ensure(&data_dir, addr)?) } else { None };
            let config = dev_config(config, addr, internal_addr, &data_dir, tls.as_ref())?;
            // Refused here, before anything is announced, rather than by the server task while
            // the bootstrap below retries against services that never start.
            steward_server::validate(&config, &ServiceKind::ALL)?;
            let mut server = tokio::spawn(run(
                config.clone(),
                &ServiceKind::ALL,
                system_clock(),
                steward_runtime::server::Listeners { public, internal, health, metrics },
                steward_runtime::server::shutdown_signal(),
            ));
            println!(
                "steward dev: all services listening on {addr} (data in {})",
                data_dir.display()
            );
            println!("  internal listener (service credential only): {internal_addr}");
            match &tls {
                Some(tls) => {
                    println!("  TLS on; clients trust the dev CA: {}", tls.ca_file.display());
                    println!("  try: grpcurl -cacert {} {addr} list", tls.ca_file.display());
                }
                None if config.server.tls.enabled() => {
                    println!("  TLS on (server.tls); clients trust the CA that issued it");
                    println!("  try: grpcurl -cacert CA_FILE {addr} list");
                }
                None => println!("  try: grpcurl -plaintext {addr} list"),
            }
            // A server that stops while the bootstrap waits for it ends `dev` with its error.
            let bootstrapped = tokio::select! {
                stopped = &mut server => return ended(stopped),
                bootstrapped = bootstrap_dev(&config, &owner_email) => bootstrapped,
            };
            match bootstrapped {
                Ok(Some(token)) => {
                    println!("  first organization created; its owner is {owner_email}");
                    println!(
                        "  set the owner's password: run `steward accept-invite` and paste this \
                         single-use token when it asks:"
                    );
                    println!("    {token}");
                    let link = set_password_link(&config, &token);
                    if config.auth.console_is_placeholder() {
                        println!("  link for a web console (none ships yet): {link}");
                    } else {
                        println!("  or in the console: {link}");
                    }
                }
                Ok(None) => println!(
                    "  existing organization kept (see {}/mail for links)",
                    data_dir.display()
                ),
                Err(err) => eprintln!("  could not bootstrap the first organization: {err}"),
            }
            ended(server.await)
        }
    }
}

/// How `dev`'s server task ended, as `dev`'s own result.
fn ended(
    joined: Result<Result<(), steward_server::ServerError>, tokio::task::JoinError>,
) -> Result<(), steward_server::ServerError> {
    joined.map_err(|e| steward_server::ServerError::Config(format!("server task failed: {e}")))?
}
