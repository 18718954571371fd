//! Hostile agents against a live `hadron up` with the real local driver and
//! the sandbox on: every row of the confinement issue is tried by an agent
//! (a shell script, as a model-steered CLI would run), and each is refused
//! or contained while a victim request runs beside them.
//!
//! Each hostile agent writes what it managed into `findings/<request>.txt`
//! in its own workspace, which Hadron commits and pushes: a line `LEAK …`
//! is a row that got through. The test also checks from outside (Hadron's
//! data dir, its repos, the processes left, the victims' results).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use hadron_tests::{Live, api_phases, copy_tree, git_as, git_stdout, git_try, hadron_bin, workspace_root};

/// The secret in Hadron's environment and in the file its command line names.
const CANARY: &str = "canary-7f3a9c41d2";

/// Every row: the request name, and the shell the agent runs for it.
fn rows(root: &Path, data: &Path, hadron_port: u16, upstream: u16) -> Vec<(&'static str, String)> {
    let data = data.display();
    let root = root.display();
    vec![
        (
            "environ",
            // /proc/<hadron pid>/environ, /proc/1/environ, every process it can see.
            format!(
                "for f in /proc/[0-9]*/environ; do if tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -q {CANARY}; then leak \"environ $f\"; fi; done; \
                 n=$(ls -d /proc/[0-9]* | wc -l); [ \"$n\" -lt 10 ] || leak \"sees $n processes\"; ok environ"
            ),
        ),
        (
            "secret-file",
            format!(
                "cat '{root}/webhook.secret' 2>/dev/null | grep -q {CANARY} && leak 'read the webhook secret file'; \
                 w=webhook; for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null | grep -q \"$w-secret\" && leak \"cmdline $f\"; done; ok secret-file"
            ),
        ),
        (
            "store",
            format!(
                "cp '{data}/hadron.db' stolen.db 2>/dev/null && leak 'copied the store'; for f in hadron.db repos source writer gates; do [ -e '{data}'/$f ] && leak \"sees {data}/$f\"; done; ok store"
            ),
        ),
        (
            "cross-write",
            format!(
                "sleep 1; for d in '{data}'/runs/*/; do case \"$d\" in *\"$HADRON_WORKER\"*) continue ;; esac; \
                   echo pwned > \"$d/workspace/intruder.txt\" 2>/dev/null && leak \"wrote into $d/workspace\"; \
                   printf '%s' '{{\"worker\":\"x\",\"outcome\":\"Succeeded\"}}' > \"$d/result.json\" 2>/dev/null && leak \"wrote $d/result.json\"; \
                 done; ok cross-write"
            ),
        ),
        (
            "push-control",
            format!(
                "git clone -q '{data}/repos/control.git' c 2>/dev/null && leak 'cloned the control repo'; \
                 if [ -d c ]; then printf 'apiVersion: hadron.dev/v1alpha1\\nkind: ChangeRequest\\nmetadata:\\n  name: injected\\nspec:\\n  title: x\\n  repos:\\n    - url: ../demo-app.git\\n' > c/requests/injected.yaml; \
                 (cd c && git add -A && git -c user.name=a -c user.email=a@b commit -qm x && git push -q) && leak 'pushed a request'; rm -rf c; fi; ok push-control"
            ),
        ),
        (
            "hook",
            format!(
                "for r in '{data}'/repos/*.git; do printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > \"$r/hooks/post-receive\" 2>/dev/null && leak \"planted a hook in $r\"; done; ok hook"
            ),
        ),
        (
            "daemon",
            // The marker is split so that the agent's own command line does not hold it.
            "m=hostile-daemon; setsid sh -c 'while :; do sleep 1; done' \"$m-left-behind\" </dev/null >/dev/null 2>&1 & sleep 0.3; ok daemon".to_owned(),
        ),
        (
            "gitconfig",
            "git config --global user.name pwned && [ -f \"$HOME/.gitconfig\" ] || leak 'no private home'; ok gitconfig".to_owned(),
        ),
        (
            "socket",
            format!(
                "bash -c 'echo > /dev/tcp/127.0.0.1/{hadron_port}' 2>/dev/null && leak 'reached hadron on loopback'; \
                 bash -c 'echo > /dev/tcp/127.0.0.1/{upstream}' 2>/dev/null && leak 'reached a loopback service'; ok socket"
            ),
        ),
        (
            "ptrace",
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = hadron-under-te ] && leak \"sees hadron as $p\"; done; \
             grep -q '^CapEff:[[:space:]]*0000000000000000' /proc/self/status || leak 'has capabilities'; ok ptrace"
                .to_owned(),
        ),
        (
            "egress",
            // Run by the agent that may reach the upstream only: through the
            // proxy it is given, the upstream answers; another port is refused;
            // the upstream itself is not reachable directly.
            format!(
                "bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; printf \"CONNECT 127.0.0.1:{upstream} HTTP/1.1\\r\\n\\r\\n\" >&3; \
                   IFS= read -r line <&3; echo \"allowed: $line\"; IFS= read -r blank <&3; printf ping >&3; head -c 4 <&3; echo; \
                   exec 4<>/dev/tcp/127.0.0.1/3128; printf \"CONNECT 127.0.0.1:{refused} HTTP/1.1\\r\\n\\r\\n\" >&4; \
                   IFS= read -r line <&4; echo \"refused: $line\"' >> \"$out\" 2>&1; \
                 if bash -c 'echo > /dev/tcp/127.0.0.1/{upstream}' 2>/dev/null; then echo 'direct: reached' >> \"$out\"; else echo 'direct: no route' >> \"$out\"; fi; ok egress",
                refused = upstream.wrapping_add(1)
            ),
        ),
        (
            "print",
            // 60 MB on standard output, in lines and as one endless line.
            "head -c 30000000 /dev/zero | tr '\\0' x | fold -w 2000; head -c 30000000 /dev/zero | tr '\\0' y; echo; echo last-line-of-print; ok print".to_owned(),
        ),
        (
            "summary",
            // A 3 MiB summary in the usage report.
            "{ printf '{\"tokensIn\": 10, \"tokensOut\": 5, \"summary\": \"'; head -c 3145728 /dev/zero | tr '\\0' s; printf '\"}'; } > \"$HADRON_REPORT_FILE\"; ok summary".to_owned(),
        ),
        (
            "usage",
            "printf '{\"tokensIn\": 1e300, \"tokensOut\": 1, \"costUSD\": 1e300, \"summary\": \"rich\"}' > \"$HADRON_REPORT_FILE\"; ok usage".to_owned(),
        ),
        (
            "flood",
            // The budget is 16 MiB: 12 MB in the workspace and 12 MB in /tmp is over it.
            "head -c 12000000 /dev/zero > big-in-workspace.bin; head -c 12000000 /dev/zero > /tmp/big-in-tmp.bin; sleep 3; ok flood".to_owned(),
        ),
    ]
}

/// The agent: one script for every row, chosen by the request's name.
fn agent_file(rows: &[(&str, String)], name: &str, network: &str) -> String {
    let mut script = String::from(
        "set -u\nmkdir -p findings\nout=\"findings/$HADRON_REQUEST.txt\"\nleak() { echo \"LEAK $*\" >> \"$out\"; }\nok() { echo \"done $*\" >> \"$out\"; }\ncase \"$HADRON_REQUEST\" in\n",
    );
    for (row, body) in rows {
        script.push_str(&format!("  {row}) {body} ;;\n"));
    }
    script.push_str("  victim-fails) sleep 4; echo mine > victim.txt; exit 3 ;;\n  victim-ok) sleep 4; echo mine > victim.txt ;;\nesac\n");
    let indented: String = script.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n  command:\n    - sh\n    - -c\n    - |\n{indented}  requireChange: false\n{network}"
    )
}

fn request(name: &str, agent: &str, budget: &str) -> String {
    format!(
        "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: Hostile row {name}\n  agent: {agent}\n  repos:\n    - url: ../demo-app.git\n  stages:\n    - name: implement\n{budget}"
    )
}

/// A loopback service: answers `pong` to whatever it is sent.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4];
            let _ = conn.read_exact(&mut buf);
            let _ = conn.write_all(b"pong");
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn hostile_agents_are_refused_or_contained() {
    if hadron::workers::sandbox::Sandbox::probe().is_err() {
        assert!(
            std::env::var_os("HADRON_REQUIRE_SANDBOX").is_none(),
            "the sandbox is required here (HADRON_REQUIRE_SANDBOX) but cannot run: {:?}",
            hadron::workers::sandbox::Sandbox::probe()
        );
        eprintln!("skipped: bubblewrap cannot run here ({:?})", hadron::workers::sandbox::Sandbox::probe());
        return;
    }
    // Daemons of an earlier, unconfined run (a negative control) do not count.
    let daemons_before = processes_with("hostile-daemon-left-behind");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    copy_tree(&workspace_root().join("example-repo"), &root.join("example-repo")).expect("copy the example");
    for f in ["add-greeting", "add-healthz", "document-usage"] {
        std::fs::remove_file(root.join(format!("example-repo/requests/{f}.yaml"))).expect("remove");
    }
    std::fs::write(root.join("webhook.secret"), CANARY).expect("secret");
    std::fs::create_dir_all(root.join("home")).expect("home");
    let hadron_port = free_port();
    let listen = format!("127.0.0.1:{hadron_port}");
    let home = root.join("home");
    let secret_file = root.join("webhook.secret");
    let live = Live::start_with_env(
        hadron_bin!(),
        root,
        &["up", "example-repo", "--listen", &listen, "--poll-seconds", "3600"],
        &[
            ("GITEA_TOKEN", CANARY),
            ("HOME", home.to_str().expect("utf-8")),
            ("HADRON_WEBHOOK_SECRET_FILE", secret_file.to_str().expect("utf-8")),
        ],
    );
    let addr = live.address();
    live.wait_for_line(&["watching"], "up is running");
    assert!(!live.out().contains("UNCONFINED"), "the sandbox runs here: {}", live.out());
    let data = root.join(".hadron");
    let up_port = upstream();
    let rows = rows(root, &data, hadron_port, up_port);

    let clone = root.join("alice");
    git_as(root, "alice", &["clone", "-q", data.join("repos/control.git").to_str().expect("utf-8"), "alice"]);
    std::fs::write(clone.join("agents/hostile.yaml"), agent_file(&rows, "hostile", "")).expect("agent");
    std::fs::write(
        clone.join("agents/hostile-net.yaml"),
        agent_file(&rows, "hostile-net", &format!("  network:\n    allow: [\"127.0.0.1:{up_port}\"]\n")),
    )
    .expect("agent");
    let budget = "  budget:\n    maxWorkspaceSize: 16Mi\n";
    std::fs::create_dir_all(clone.join("requests")).expect("requests folder");
    let mut names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
    names.extend(["victim-fails", "victim-ok"]);
    for name in &names {
        let agent = if *name == "egress" { "hostile-net" } else { "hostile" };
        std::fs::write(clone.join(format!("requests/{name}.yaml")), request(name, agent, budget)).expect("request");
    }
    let settings = std::fs::read_to_string(clone.join("hadron.yaml")).expect("settings");
    std::fs::write(clone.join("hadron.yaml"), settings.replace("maxConcurrentWorkers: 4", "maxConcurrentWorkers: 16")).expect("settings");
    git_as(&clone, "alice", &["add", "-A"]);
    git_as(&clone, "alice", &["commit", "-q", "-m", "Hostile agents"]);
    assert!(git_try(&clone, "alice", &["push", "-q", "origin", "main"]), "push");

    let started = Instant::now();
    let settled = loop {
        let phases = api_phases(&addr);
        let done = names.iter().all(|n| phases.get(*n).is_some_and(|p| p == "Succeeded" || p == "Failed"));
        if done {
            break phases;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "not settled: {phases:?}\n{}", live.logs());
        std::thread::sleep(Duration::from_millis(200));
    };

    let target = data.join("repos/demo-app.git");
    let show = |request: &str, path: &str| git_stdout(&target, "alice", &["show", &format!("hadron/{request}:{path}")]);
    // Every row that runs to the end says what it managed: nothing.
    for (row, _) in rows.iter().filter(|(r, _)| !["flood", "usage"].contains(r)) {
        assert_eq!(settled[*row], "Succeeded", "row {row}\n{}", live.logs());
        let findings = show(row, &format!("findings/{row}.txt"));
        assert!(findings.contains(&format!("done {row}")), "row {row} ran to its end: {findings:?}");
        assert!(!findings.contains("LEAK"), "row {row} got through: {findings}");
    }
    // The flood is stopped and the status names the budget and the files.
    assert_eq!(settled["flood"], "Failed");
    let status = git_stdout(&data.join("repos/control.git"), "alice", &["show", "main:status/flood.yaml"]);
    assert!(status.contains("WorkspaceTooLarge") || status.contains("maxWorkspaceSize"), "{status}");
    assert!(status.contains("big-in-workspace.bin") || status.contains("big-in-tmp.bin"), "the biggest files are named: {status}");

    // 60 MB of output leave a bounded log that still ends with the agent's last line.
    let run_dir = |request: &str| {
        std::fs::read_dir(data.join("runs"))
            .expect("runs")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&format!("hadron-{request}-")))
            .map(|e| e.path())
            .expect("the run dir")
    };
    let log = std::fs::read_to_string(run_dir("print").join("worker.log")).expect("log");
    assert!(log.len() < 3 << 20, "worker.log is {} bytes", log.len());
    assert!(log.contains("dropped here") && log.contains("last-line-of-print"), "the marker and the tail are kept");
    // A 3 MiB summary is cut where it is shown.
    let status = |request: &str| git_stdout(&data.join("repos/control.git"), "alice", &["show", &format!("main:status/{request}.yaml")]);
    let summary = status("summary");
    assert!(
        summary.len() < 16 << 10 && summary.contains("[cut: 3.0 MiB reported"),
        "{} bytes: {}",
        summary.len(),
        &summary[..summary.len().min(600)]
    );
    // An absurd usage report is one clear failure, not a retry loop.
    assert_eq!(settled["usage"], "Failed");
    let usage = status("usage");
    assert!(usage.contains("InvalidUsageReport") && usage.contains("attempt: 1") && !usage.contains("attempt: 2"), "{usage}");

    // The victims' results are their own.
    assert_eq!(settled["victim-fails"], "Failed", "its agent exited 3, whatever was written beside it");
    assert_eq!(settled["victim-ok"], "Succeeded");
    assert_eq!(show("victim-ok", "victim.txt").trim(), "mine");
    assert_eq!(show("victim-ok", "intruder.txt"), "", "no file of another agent in its commit");

    // From outside: nothing injected, no hook planted, no daemon left, no
    // global git config written, the store never copied.
    let requests = git_stdout(&data.join("repos/control.git"), "alice", &["ls-tree", "--name-only", "main", "requests/"]);
    assert!(!requests.contains("injected"), "{requests}");
    for repo in ["control.git", "demo-app.git", "demo-docs.git"] {
        assert!(!data.join("repos").join(repo).join("hooks/post-receive").exists(), "a hook was planted in {repo}");
    }
    let daemons: Vec<String> = processes_with("hostile-daemon-left-behind").into_iter().filter(|p| !daemons_before.contains(p)).collect();
    assert_eq!(daemons, Vec::<String>::new(), "a process outlived its stage");
    assert!(!home.join(".gitconfig").exists(), "the agent wrote the operator's ~/.gitconfig");
    assert_eq!(show("store", "stolen.db"), "");

    // The allowed endpoint is reached through the proxy; nothing else is, and
    // the worker's log says what was refused.
    let egress = show("egress", "findings/egress.txt");
    assert!(egress.contains("allowed: HTTP/1.1 200") && egress.contains("pong"), "{egress}");
    assert!(egress.contains("refused: HTTP/1.1 403"), "{egress}");
    assert!(egress.contains("direct: no route"), "{egress}");
    let log = std::fs::read_dir(data.join("runs"))
        .expect("runs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("egress"))
        .map(|e| std::fs::read_to_string(e.path().join("worker.log")).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("network: refused CONNECT 127.0.0.1:"), "{log}");
}
