//! `kdet data`.

use super::*;

/// The flags of `kdet data`.
#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub cmd: DataCmd,
}

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    let DataCmd::Check {
        annotations,
        images,
    } = args.cmd;
    let r = kdet::eval::check::check_dataset(&annotations, images.as_deref())?;
    print!("{}", r.to_text());
    Ok(if r.errors.is_empty() && r.bad_images.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Subcommand)]
pub enum DataCmd {
    /// Validate a COCO instances file (located errors) and summarise it: images, boxes per
    /// class, size distribution, hotcoco healthcheck findings. Exits non-zero on any error.
    Check {
        /// COCO instances JSON.
        annotations: PathBuf,
        /// Image folder: also check that every image exists, decodes in full (in parallel) and
        /// has the stated size; each bad file is reported with its index in `images`.
        #[arg(long)]
        images: Option<PathBuf>,
    },
}
