//! `check`: run cached actions again and compare their results (see
//! `execution::check`), one line (or JSON object) per action.

use std::path::Path;
use std::process::ExitCode;

use super::address::{Target, with_daemon};
use crate::client;
use crate::proto::nativelink_lre::v1 as admin;

/// Exit status when an action gave a different result.
const EXIT_DIFFERENT: u8 = 3;
/// Exit status when an action could not be checked (and none differed).
const EXIT_UNCHECKED: u8 = 4;

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// Every action with a shared action cache entry.
    #[arg(long, conflicts_with = "sample")]
    all: bool,
    /// This many actions with a shared entry, at random.
    #[arg(long, value_name = "N")]
    sample: Option<u32>,
    /// Print one JSON object per action.
    #[arg(long)]
    json: bool,
    /// Action digests, as HASH/SIZE.
    #[arg(value_name = "ACTION_DIGEST", required_unless_present_any = ["all", "sample"])]
    actions: Vec<String>,
}

pub fn check(config: Option<&Path>, args: CheckArgs) -> ExitCode {
    let req = admin::CheckRequest {
        action_digests: args.actions,
        all: args.all,
        sample: args.sample.unwrap_or(0),
    };
    let json = args.json;
    with_daemon(config, &args.target, |ch| async move {
        let (mut different, mut unchecked) = (0, 0);
        client::check(&ch, req, |r| {
            match r.outcome.as_str() {
                "same" => {}
                "different" => different += 1,
                _ => unchecked += 1,
            }
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            } else {
                print!("{}", client::format_check(r));
            }
        })
        .await?;
        Ok(if different > 0 {
            ExitCode::from(EXIT_DIFFERENT)
        } else if unchecked > 0 {
            ExitCode::from(EXIT_UNCHECKED)
        } else {
            ExitCode::SUCCESS
        })
    })
}
