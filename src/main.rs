//! The `cooper` command: `cooper start` runs a node; the other commands talk to a running
//! node over HTTP (`--node`, default http://127.0.0.1:7080).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cooper::client::{query_string, segment, Client};
use cooper::config::{Config, DEFAULT_HTTP};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "cooper",
    version,
    about = "Cooper: a peer-to-peer document database node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The node client commands talk to.
    #[arg(
        long,
        global = true,
        env = "COOPER_NODE",
        default_value = "http://127.0.0.1:7080"
    )]
    node: String,
    /// Bearer token for a node that requires one.
    #[arg(long, global = true, env = "COOPER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the node's JSON answers as they are (for scripts).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Start {
        /// Data directory [default: ./cooper-data].
        #[arg(long, env = "COOPER_DATA")]
        data: Option<PathBuf>,
        /// HTTP address [default: 127.0.0.1:7080].
        #[arg(long, env = "COOPER_HTTP")]
        http: Option<SocketAddr>,
        /// A TOML config file (flags and COOPER_* variables override it).
        #[arg(long, env = "COOPER_CONFIG")]
        config: Option<PathBuf>,
        /// Serve HTTP on a non-loopback address without authentication.
        #[arg(long)]
        insecure: bool,
    },
    /// Show the node's status.
    Status,
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Create, list or delete barrels.
    Barrel {
        #[command(subcommand)]
        action: BarrelAction,
    },
    /// Write a document from FILE or standard input (`-`, the default).
    Put {
        /// The barrel.
        barrel: String,
        /// A JSON file holding one document (with `_id`, and `_rev` to update), or `-`.
        file: Option<PathBuf>,
    },
    /// Read a document.
    Get {
        /// The barrel.
        barrel: String,
        /// The document id.
        id: String,
    },
    /// Query documents: conditions like `age=gte.18`, `order=age.desc`, `limit=10`.
    Query {
        /// The barrel.
        barrel: String,
        /// Conditions and options.
        conditions: Vec<String>,
    },
    /// Print changes live as they happen (reconnects when the node restarts).
    Listen {
        /// The barrel.
        barrel: String,
        /// Topic filters, e.g. `users/+/name/#` (default: everything).
        filters: Vec<String>,
        /// Start after this seq (`0` replays everything) [default: now].
        #[arg(long, default_value = "now")]
        since: String,
        /// Include each document.
        #[arg(long)]
        include_docs: bool,
    },
    /// Replicate a barrel with another (a local name, or a CouchDB-protocol URL such as
    /// http://host:7080/couch/people or http://host:5984/people).
    Replicate {
        /// Where documents come from (with --direction push).
        source: String,
        /// Where they go.
        target: String,
        /// Keep following changes (the task is resumed when the node restarts).
        #[arg(long)]
        continuous: bool,
        /// push (source to target), pull (target to source) or sync (both).
        #[arg(long, default_value = "push")]
        direction: String,
        /// Only documents with a topic matching one of these filters.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Read the changes feed.
    Changes {
        /// The barrel.
        barrel: String,
        /// Changes after this seq.
        #[arg(long, default_value = "0")]
        since: String,
        /// Most rows.
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum BarrelAction {
    /// Create a barrel.
    Create {
        /// Its name.
        name: String,
    },
    /// List barrels.
    List,
    /// Delete a barrel and all its documents.
    Delete {
        /// Its name.
        name: String,
    },
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = actix_rt::System::new().block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.node, cli.token.clone());
    let json = cli.json;
    match cli.command {
        Command::Start {
            data,
            http,
            config,
            insecure,
        } => start(data, http, config, insecure).await,
        Command::Replicate {
            source,
            target,
            continuous,
            direction,
            filter,
        } => {
            let body = serde_json::json!({"source": source, "target": target, "continuous": continuous,
                "direction": direction, "filter": filter});
            let v = client
                .call("POST", "/replicate", Some(body.to_string().into_bytes()))
                .await?;
            let text = format!(
                "replication {} {}: {} read, {} written, {} failed{}",
                v["id"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?"),
                v["docs_read"],
                v["docs_written"],
                v["doc_write_failures"],
                v["error"]
                    .as_str()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
            output(json, &v, &text);
            Ok(())
        }
        Command::Schema => {
            print!("{}", cooper::graphql::sdl());
            Ok(())
        }
        Command::Status => {
            let info = client.call("GET", "/", None).await?;
            let barrels = client.call("GET", "/barrels", None).await?;
            if json {
                print_json(&serde_json::json!({"node": info, "barrels": barrels}));
            } else {
                println!(
                    "node {}: ok, cooper {}",
                    cli.node,
                    info["version"].as_str().unwrap_or("?")
                );
                println!("barrels: {}", list(&barrels));
            }
            Ok(())
        }
        Command::Barrel { action } => {
            let (value, text) = match action {
                BarrelAction::Create { name } => (
                    client
                        .call("PUT", &format!("/barrels/{}", segment(&name)), None)
                        .await?,
                    format!("created barrel {name}"),
                ),
                BarrelAction::Delete { name } => (
                    client
                        .call("DELETE", &format!("/barrels/{}", segment(&name)), None)
                        .await?,
                    format!("deleted barrel {name}"),
                ),
                BarrelAction::List => {
                    let v = client.call("GET", "/barrels", None).await?;
                    let text = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default();
                    (v, text)
                }
            };
            output(json, &value, &text);
            Ok(())
        }
        Command::Put { barrel, file } => {
            let body = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p.as_os_str() == "-" => read_stdin()?,
                Some(p) => std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
            };
            let doc: Value = serde_json::from_slice(&body)
                .map_err(|e| anyhow::anyhow!("the document is not valid JSON: {e}"))?;
            let (method, path) = match doc.get("_id").and_then(Value::as_str) {
                Some(id) => (
                    "PUT",
                    format!("/barrels/{}/docs/{}", segment(&barrel), segment(id)),
                ),
                None => ("POST", format!("/barrels/{}/docs", segment(&barrel))),
            };
            let v = client.call(method, &path, Some(body)).await?;
            let text = format!(
                "wrote {} {}",
                v["id"].as_str().unwrap_or("?"),
                v["rev"].as_str().unwrap_or("?")
            );
            output(json, &v, &text);
            Ok(())
        }
        Command::Get { barrel, id } => {
            let v = client
                .call(
                    "GET",
                    &format!("/barrels/{}/docs/{}", segment(&barrel), segment(&id)),
                    None,
                )
                .await?;
            output(
                json,
                &v,
                &serde_json::to_string_pretty(&v).unwrap_or_default(),
            );
            Ok(())
        }
        Command::Query { barrel, conditions } => {
            let qs = query_string(&conditions)?;
            let v = client
                .call(
                    "GET",
                    &format!("/barrels/{}/docs?{qs}", segment(&barrel)),
                    None,
                )
                .await?;
            let mut text = String::new();
            for d in v["docs"].as_array().into_iter().flatten() {
                text.push_str(&format!("{}  {}\n", d["_id"].as_str().unwrap_or("?"), d));
            }
            match v["next"].as_str() {
                Some(n) => text.push_str(&format!("(more: add cursor={n})")),
                None => text.push_str(&format!(
                    "({} documents)",
                    v["docs"].as_array().map_or(0, Vec::len)
                )),
            }
            output(json, &v, &text);
            Ok(())
        }
        Command::Listen {
            barrel,
            filters,
            since,
            include_docs,
        } => {
            let filters = if filters.is_empty() {
                vec!["#".to_owned()]
            } else {
                filters
            };
            let request = cooper::client::ListenRequest {
                barrel,
                filters,
                since,
                include_docs,
            };
            cooper::client::listen(
                &client,
                &request,
                |v| {
                    if json {
                        println!("{v}");
                    } else {
                        let deleted = if v["deleted"] == Value::Bool(true) {
                            "  deleted"
                        } else {
                            ""
                        };
                        let topics: Vec<&str> = v["topics"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        println!(
                            "{:>6}  {}  {}{deleted}  {}",
                            v["seq"].as_str().unwrap_or("?"),
                            v["doc_id"].as_str().unwrap_or("?"),
                            v["rev"].as_str().unwrap_or("?"),
                            topics.join(" ")
                        );
                        if let Some(doc) = v.get("doc") {
                            println!("        {doc}");
                        }
                    }
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                },
                |notice| eprintln!("cooper listen: {notice}"),
            )
            .await?;
            Ok(())
        }
        Command::Changes {
            barrel,
            since,
            limit,
        } => {
            let mut qs = format!("since={}", segment(&since));
            if let Some(l) = limit {
                qs.push_str(&format!("&limit={l}"));
            }
            let v = client
                .call(
                    "GET",
                    &format!("/barrels/{}/changes?{qs}", segment(&barrel)),
                    None,
                )
                .await?;
            let mut text = String::new();
            for r in v["results"].as_array().into_iter().flatten() {
                let deleted = if r["deleted"] == Value::Bool(true) {
                    "  deleted"
                } else {
                    ""
                };
                text.push_str(&format!(
                    "{:>6}  {}  {}{deleted}\n",
                    r["seq"].as_str().unwrap_or("?"),
                    r["id"].as_str().unwrap_or("?"),
                    r["changes"][0]["rev"].as_str().unwrap_or("?")
                ));
            }
            text.push_str(&format!(
                "last_seq {}",
                v["last_seq"].as_str().unwrap_or("?")
            ));
            output(json, &v, &text);
            Ok(())
        }
    }
}

async fn start(
    data: Option<PathBuf>,
    http: Option<SocketAddr>,
    file: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<()> {
    let mut config = match &file {
        Some(f) => Config::from_file(f)?,
        None => Config::default(),
    };
    if config.http.is_none() {
        config.http = Some(DEFAULT_HTTP.parse()?);
    }
    // Flags and COOPER_* variables (read by clap) win over the file.
    if let Some(d) = data {
        config.data_dir = d;
    }
    if let Some(h) = http {
        config.http = Some(h);
    }
    config.apply_env(|k| match k {
        "COOPER_DATA" | "COOPER_HTTP" => None, // already applied through the flags
        other => std::env::var(other).ok(),
    })?;
    config.insecure |= insecure;
    let node = cooper::Node::start(config).await?;
    let addr = node
        .http_addr()
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!(
        "cooper {} listening on http://{addr}, data in {}",
        env!("CARGO_PKG_VERSION"),
        node.config().data_dir.display()
    );
    wait_for_signal().await;
    println!("cooper: shutting down");
    node.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() {
    use actix_rt::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let ctrl_c = actix_rt::signal::ctrl_c();
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf)?;
    Ok(buf)
}

fn list(v: &Value) -> String {
    let names: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

fn output(json: bool, value: &Value, text: &str) {
    if json {
        print_json(value);
    } else {
        println!("{text}");
    }
}

fn print_json(v: &Value) {
    println!("{v}");
}
