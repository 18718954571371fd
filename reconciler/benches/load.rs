//! Benchmarks of issue "git source, incremental loading, store and status
//! write-back". Prints figures; asserts nothing about time.
//!
//! B1 cold load (fetch + read + parse + validate) beside `git cat-file --batch`
//! over the same blobs; B2 incremental load after a one-request commit; B3
//! the status writer publishing 1,000 changed files as one commit. Each
//! figure is `HADRON_BENCH_SAMPLES` samples (default 5), printed as
//! min / median / max; `HADRON_BENCH_SIZES` (default `100,1000,10000`) picks
//! the sizes. Run: `cargo bench --bench load`.

#[allow(dead_code)] // the benchmarks use a part of the tests' helpers
#[path = "../tests/support/git.rs"]
mod git;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use git::{Who, git, git_command};
use hadron::model::Catalog;
use hadron::source::{Blob, ChangeSet, LoadOptions, PathFilter, Source, SourceConfig};
use hadron::status::writer::{StatusWriter, WriterConfig};

/// Who commits in the benchmarks' repos.
const BENCH: Who = ("bench", "bench@localhost");

fn request(i: usize, rev: usize) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: req-{i}\n  labels:\n    team: t{}\nspec:\n  title: Change number {i} revision {rev}\n  description: |\n    Update the thing in module {i}. Keep the change small and add a test.\n  agent: script\n  repos:\n    - url: ../app-{}.git\n      branch: main\n  stages:\n    - name: implement\n    - name: review\n  budget:\n    maxCostUSD: 2.5\n    maxWallTime: 30m\n",
        i % 7,
        i % 13
    )
}

const SETTINGS: &str =
    "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: script\n";
const AGENT: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: script\nspec:\n  command: [sh, run.sh]\n";

/// A bare control repo with `n` requests, and a work clone to change it.
fn make_repo(root: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let bare = root.join(format!("control-{n}.git"));
    let work = root.join(format!("work-{n}"));
    std::fs::create_dir_all(work.join("requests")).expect("mkdir");
    std::fs::create_dir_all(work.join("agents")).expect("mkdir");
    std::fs::write(work.join("hadron.yaml"), SETTINGS).expect("write");
    std::fs::write(work.join("agents/script.yaml"), AGENT).expect("write");
    for i in 0..n {
        std::fs::write(work.join(format!("requests/req-{i}.yaml")), request(i, 0)).expect("write");
    }
    git(root, BENCH, &["init", "-q", "--bare", bare.to_str().expect("utf-8")]).expect("git");
    git(&work, BENCH, &["init", "-q"]).expect("git");
    git(&work, BENCH, &["add", "-A"]).expect("git");
    git(&work, BENCH, &["commit", "-q", "-m", "seed"]).expect("git");
    git(&work, BENCH, &["push", "-q", bare.to_str().expect("utf-8"), "HEAD:refs/heads/main"]).expect("git");
    (bare, work)
}

fn feed(catalog: &mut Catalog, changes: &ChangeSet) {
    let mut data = Vec::new();
    for (path, blob) in &changes.upserts {
        match blob {
            Blob::Data(bytes) => data.push((path.as_str(), bytes.as_slice())),
            Blob::TooLarge { size } => catalog.upsert_too_large(path, *size),
        }
    }
    catalog.upsert_all(&data);
    for path in &changes.deletes {
        catalog.remove(path);
    }
}

/// `git cat-file --batch` over every blob of the branch: the git baseline.
fn cat_file_baseline(bare: &Path) -> (f64, usize) {
    let start = Instant::now();
    let listing = git(bare, BENCH, &["ls-tree", "-r", "main"]).expect("git");
    let ids: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let mut child =
        git_command(bare, BENCH, &[], &["cat-file", "--batch"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = ids.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut out = Vec::new();
    child.stdout.take().expect("stdout").read_to_end(&mut out).expect("read");
    writer.join().expect("join").expect("write ids");
    child.wait().expect("wait");
    (start.elapsed().as_secs_f64() * 1000.0, out.len())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Several samples of one figure, in milliseconds.
struct Samples(Vec<f64>);

impl Samples {
    fn of(n: usize, mut f: impl FnMut(usize) -> f64) -> Self {
        let mut v: Vec<f64> = (0..n).map(&mut f).collect();
        v.sort_by(f64::total_cmp);
        Samples(v)
    }
    fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (min, max) = (self.0.first().copied().unwrap_or(0.0), self.0.last().copied().unwrap_or(0.0));
        write!(f, "{min:>8.1} / {:>8.1} / {max:>8.1} ms", self.median())
    }
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name).map_or_else(|_| default.to_vec(), |v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn main() {
    let root = tempfile::tempdir().expect("temp dir");
    let samples = env_list("HADRON_BENCH_SAMPLES", &[5]).first().copied().unwrap_or(5).max(1);
    println!(
        "machine: {} cores; {}; {samples} samples per figure, shown as min / median / max",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    let mut b2_base = None;
    for n in env_list("HADRON_BENCH_SIZES", &[100, 1_000, 10_000]) {
        let (bare, work) = make_repo(root.path(), n);
        // B1: cold load, from a fresh data dir each sample.
        let cold = Samples::of(samples, |k| {
            let data = root.path().join(format!("data-{n}-{k}"));
            let start = Instant::now();
            let mut source = Source::new(
                SourceConfig::new(bare.to_str().expect("utf-8"), &data),
                LoadOptions { filter: PathFilter::hadron(), ..LoadOptions::default() },
            )
            .expect("source");
            let rev = source.fetch().expect("fetch");
            let changes = source.load(rev).expect("load");
            let mut catalog = Catalog::new();
            feed(&mut catalog, &changes);
            let loaded = catalog.refresh();
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(loaded.desired.requests.len(), n, "{:?}", loaded.diagnostics.first());
            ms
        });
        let mut bytes = 0;
        let floor = Samples::of(samples, |_| {
            let (ms, b) = cat_file_baseline(&bare);
            bytes = b;
            ms
        });
        println!("B1 cold load    n={n:>6}: {cold} (fetch+read+parse+validate)");
        println!(
            "   git floor    n={n:>6}: {floor} (git cat-file --batch, {bytes} bytes); ratio of medians {:.2}x",
            cold.median() / floor.median()
        );

        // B2: incremental load after a commit that changes one request.
        let data = root.path().join(format!("data-{n}-inc"));
        let mut source = Source::new(
            SourceConfig::new(bare.to_str().expect("utf-8"), &data),
            LoadOptions { filter: PathFilter::hadron(), ..LoadOptions::default() },
        )
        .expect("source");
        let rev = source.fetch().expect("fetch");
        let mut catalog = Catalog::new();
        feed(&mut catalog, &source.load(rev).expect("load"));
        catalog.refresh();
        let (mut fetch_ms, mut diff_ms, mut model_ms) = (Vec::new(), Vec::new(), Vec::new());
        let inc = Samples::of(samples, |k| {
            std::fs::write(work.join("requests/req-1.yaml"), request(1, k + 1)).expect("write");
            git(&work, BENCH, &["commit", "-q", "-am", "edit one request"]).expect("git");
            git(&work, BENCH, &["push", "-q", bare.to_str().expect("utf-8"), "HEAD:refs/heads/main"]).expect("git");
            let start = Instant::now();
            let rev = source.fetch().expect("fetch");
            let fetched = start.elapsed();
            let changes = source.load(rev).expect("load");
            let diffed = start.elapsed();
            feed(&mut catalog, &changes);
            let loaded = catalog.refresh();
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(changes.upserts.len(), 1);
            assert!(loaded.desired.requests["req-1"].spec.title.ends_with(&format!("revision {}", k + 1)));
            fetch_ms.push(fetched.as_secs_f64() * 1000.0);
            diff_ms.push((diffed - fetched).as_secs_f64() * 1000.0);
            model_ms.push(ms - diffed.as_secs_f64() * 1000.0);
            ms
        });
        let base = *b2_base.get_or_insert(inc.median());
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "B2 incremental  n={n:>6}: {inc} (1 blob read; medians: fetch {:.1} ms, diff+read {:.1} ms, model {:.1} ms); median to n={}: {:.2}x",
            med(fetch_ms),
            med(diff_ms),
            med(model_ms),
            env_list("HADRON_BENCH_SIZES", &[100]).first().copied().unwrap_or(100),
            inc.median() / base
        );
    }

    // B3: publishing 1,000 changed status files as one commit (the status
    // writer alone, not a whole pass).
    let (bare, _) = make_repo(root.path(), 10);
    let mut writer =
        StatusWriter::new(WriterConfig::new(bare.to_str().expect("utf-8"), "main", root.path().join("writer"))).expect("writer");
    let mut attempts = 0;
    let publish = Samples::of(samples, |k| {
        let files: BTreeMap<String, Option<Vec<u8>>> = (0..1000)
            .map(|i| {
                let text = format!(
                    "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: req-{i}\nstatus:\n  phase: Running\n  message: sample {k}\n"
                );
                (format!("status/req-{i}.yaml"), Some(text.into_bytes()))
            })
            .collect();
        let before: usize = git(&bare, BENCH, &["rev-list", "--count", "main"]).expect("git").parse().expect("count");
        let start = Instant::now();
        let outcome = writer.publish(&files, "status: 1000 requests", &"0".repeat(40)).expect("publish");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let after: usize = git(&bare, BENCH, &["rev-list", "--count", "main"]).expect("git").parse().expect("count");
        assert_eq!(after - before, 1, "one commit per publish");
        attempts += outcome.attempts;
        ms
    });
    println!("B3 publish 1,000 status files as one commit: {publish} ({attempts} push attempts in {samples} samples)");
    println!("peak RSS: {:.1} MiB", peak_rss_mib());
}
