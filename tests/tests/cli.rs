//! `--help` on every command says what it does.

use hadron_tests::{hadron_bin, run};

#[test]
fn help_lists_commands_and_explains_them() {
    let out = run(hadron_bin!(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["validate", "schema"] {
        assert!(text.contains(cmd), "--help does not list `{cmd}`:\n{text}");
        let sub = run(hadron_bin!(), &[cmd, "--help"]);
        assert_eq!(sub.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&sub.stdout).lines().count() > 5, "`{cmd} --help` says too little");
    }
    let validate = String::from_utf8_lossy(&run(hadron_bin!(), &["validate", "--help"]).stdout).into_owned();
    let flat = validate.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Exit status: 0 when clean"), "{validate}");
}
