//! `kdet fed`: one piece of a federated run at a time, for an outside driver (the Flower app in
//! tools/flower/): the initial global state, a round's clients, a client's local training, the
//! evaluation of global weights. `kdet train` runs the whole simulation itself.

use super::*;
use kdet::federated::external::{read_state, round_json, write_state, External};

/// The flags of `kdet fed`.
#[derive(clap::Args)]
pub struct FedArgs {
    #[command(subcommand)]
    cmd: FedCmd,
}

#[derive(Subcommand)]
enum FedCmd {
    /// Write the global state a run of CONFIG starts from (its seeded initialisation).
    Init {
        /// A config with a `federated` section.
        config: PathBuf,
        /// The state file to write (safetensors; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the clients round ROUND (0-based) samples and its learning rate, as JSON.
    Sample {
        config: PathBuf,
        #[arg(long)]
        round: u64,
    },
    /// Train client CLIENT for round ROUND from the global state WEIGHTS; write its state to
    /// OUT and print its image count (its weight in the average), steps and mean losses as JSON.
    Client {
        config: PathBuf,
        #[arg(long)]
        round: u64,
        #[arg(long)]
        client: usize,
        /// The round's global state (a file of `kdet fed init` or of an average).
        #[arg(long)]
        weights: PathBuf,
        /// The client's state after training (safetensors; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate the global state WEIGHTS on CONFIG's val split as the simulation does each
    /// round; print the evaluation as JSON.
    Eval {
        config: PathBuf,
        #[arg(long)]
        weights: PathBuf,
    },
}

pub fn run(args: FedArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let open = |c: &std::path::Path| -> anyhow::Result<External> {
        let cfg = load_config(c, device)?;
        Ok(External::open(&cfg, kdet::distill::build_method)?)
    };
    match args.cmd {
        FedCmd::Init { config, out } => {
            let ext = open(&config)?;
            write_state(&out, &ext.initial()?)?;
        }
        FedCmd::Sample { config, round } => {
            let ext = open(&config)?;
            let (clients, lr) = ext.sample(round);
            println!(
                "{}",
                serde_json::json!({"round": round, "clients": clients, "lr": lr})
            );
        }
        FedCmd::Client {
            config,
            round,
            client,
            weights,
            out,
        } => {
            let mut ext = open(&config)?;
            let (w, done) = ext.train_client(round, client, &read_state(&weights)?)?;
            write_state(&out, &w)?;
            println!("{}", round_json(&done));
        }
        FedCmd::Eval { config, weights } => {
            let mut ext = open(&config)?;
            let e = ext.evaluate(&read_state(&weights)?)?;
            let mut v = serde_json::Map::new();
            for (k, x) in e.named() {
                v.insert(k.to_string(), serde_json::json!(x));
            }
            println!("{}", serde_json::Value::Object(v));
        }
    }
    Ok(ExitCode::SUCCESS)
}
