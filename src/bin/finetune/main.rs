//! `finetune`: every experiment of the fine-tuning chapter from the command line.
//!
//! This file only dispatches. Flags become typed values once, in args.rs (the groups
//! several commands flatten in, and value parsers that refuse a bad number as clap reads it);
//! each family of commands has its own file: train.rs, inference.rs, tools.rs, serve.rs.

mod args;
mod inference;
#[cfg(feature = "serve")]
mod serve;
mod tools;
mod train;

use clap::{Parser, Subcommand};
use train::Recipe;

#[derive(Parser)]
#[command(name = "finetune", version, about = "Fine-tuning pretrained CNNs with Candle: the d2l.ai hot-dog chapter and the Keras two-phase recipe", after_help = args::ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// d2l 13.2: fine-tune a pretrained backbone (SGD, lr 5e-5 on the summed loss, head 10x).
    Finetune(train::TrainArgs),
    /// d2l 13.2: the same network from random weights (lr 5e-4, one learning rate).
    Scratch(train::TrainArgs),
    /// Train the head only, backbone frozen (feature extraction).
    Freeze(train::TrainArgs),
    /// The Keras recipe: head first (Adam 1e-3, backbone frozen), then the top blocks at 1e-5.
    TwoPhase(train::TwoPhaseArgs),
    /// Classify images (files, folders searched recursively, globs) in batches: text, JSON or CSV.
    Predict(inference::PredictArgs),
    /// Learning-rate finder: an exponential lr sweep over one pass; plot, JSON and a suggested lr
    /// (fastai's valley rule: the middle of the longest falling stretch of the smoothed loss).
    /// The weights file is not changed and nothing is saved but the plot and JSON.
    LrFind(train::LrFindArgs),
    /// The model's head, its parameter counts and its freezable blocks.
    Info(tools::InfoArgs),
    /// The first 8 images of the first class and the last 8 of the last, as one PNG grid.
    Peek(tools::PeekArgs),
    /// Classify the test photos with the untouched ImageNet head: "hot dog" iff class 934 wins.
    ZeroShot(inference::ZeroShotArgs),
    /// Time training steps and inference on random data (img/s), optionally a real epoch on photos.
    Bench(tools::BenchArgs),
    /// Download and unpack a data set: d2l's hot dogs (SHA-1 checked; $WORKBOOK_HOTDOG_URL overrides the URL) or TensorFlow's flowers (--dataset flowers: size and SHA-256 checked; $WORKBOOK_FLOWERS_URL).
    Download(tools::DownloadArgs),
    /// Serve a saved model over HTTP: a SeeFood page at /, POST /predict, GET /model, GET /health.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// A saved model on one split: OUT/metrics.json, OUT/confusion.png, OUT/top-losses.png.
    Evaluate(inference::EvaluateArgs),
}

fn main() -> std::process::ExitCode {
    transfer_workbook::keep_freed_memory();
    let result = match Cli::parse().command {
        Command::Finetune(a) => train::train(a, Recipe::Finetune),
        Command::Scratch(a) => train::train(a, Recipe::Scratch),
        Command::Freeze(a) => train::train(a, Recipe::Freeze),
        Command::TwoPhase(a) => train::two_phase(a),
        Command::LrFind(a) => train::lr_find(a),
        Command::Predict(a) => inference::predict(a),
        Command::Evaluate(a) => inference::evaluate(a),
        Command::ZeroShot(a) => inference::zero_shot(a),
        Command::Info(a) => tools::info(a),
        Command::Peek(a) => tools::peek(a),
        Command::Bench(a) => tools::bench(a),
        Command::Download(a) => tools::download(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => a.run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole context chain, one cause per line, no backtrace: these are user errors.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
