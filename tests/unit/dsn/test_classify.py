"""Bounce classifier: rule loading and order, fallbacks, STANDARDS B02 overrides, local causes,
raw multi-line replies, the labelled provider corpus, and the `classify` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_engine.dsn.classify import (
    LOCAL_CAUSES,
    BounceClass,
    Classification,
    Classifier,
    Permanence,
    _default_rules,
    _required_literals,
    _search_of,
    _split_raw,
    load_rules,
    parse_rules,
)
from mta_engine.errors import ConfigError
from tests.unit.test_layering import IO_MODULES, imported

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "data" / "bounce_corpus.jsonl"
P, T = Permanence.PERMANENT, Permanence.TRANSIENT


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.default()


def write_rules(tmp_path: Path, body: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


# ------------------------------------------------------------------------------- rule loading
def test_shipped_rules_load_with_unique_names(classifier: Classifier) -> None:
    """The packaged rules.toml parses, and every rule has a distinct name."""
    names = [r.name for r in classifier.rules]
    assert len(names) > 40
    assert len(set(names)) == len(names)


def test_classify_module_does_no_io() -> None:
    """dsn/classify.py imports nothing that does I/O (the STYLE.md layering rule)."""
    path = REPO / "mta_engine" / "dsn" / "classify.py"
    assert not imported(path) & IO_MODULES


def test_repr_names_rule_counts(classifier: Classifier) -> None:
    """repr(Classifier) shows how many rules (and local-cause rules) it holds and its cache size."""
    text = repr(classifier)
    assert text.startswith(f"<Classifier rules={len(classifier.rules)} local=7 ")
    assert "cache_size=8192" in text


@pytest.mark.parametrize("body, message", [
    ('[[rule]]\nname = "a"\ncategory = "nope"\n', "category"),
    ('[[rule]]\nname = "a"\ncategory = "other"\ncolour = "red"\n', "unknown key"),
    ('[[rule]]\ncategory = "other"\n', "name"),
    ('[[rule]]\nname = "a"\ncategory = "other"\ntext = "(unclosed"\n', "regex"),
    ('[[rule]]\nname = "a"\ncategory = "other"\nenhanced = "5.x"\n', "RFC 3463"),
    ('[[rule]]\nname = "a"\ncategory = "other"\nphase = ["rcpt_to"]\n', "phase"),
    ('[[rule]]\nname = "a"\ncategory = "other"\ncode = 99\n', "code"),
    ('[[rule]]\nname = "a"\ncategory = "other"\npermanence = "sometimes"\n', "permanence"),
    ('[[rule]]\nname = "a"\ncategory = "other"\n[[rule]]\nname = "a"\ncategory = "other"\n', "duplicate"),
    ('[[rule]]\nname = "a"\ncategory = "other"\nlocal_cause = "timeout"\ncode = 451\n', "local_cause"),
    ('rules = []\n', "top-level"),
    ('[[rule]\n', "invalid TOML"),
])
def test_bad_rule_file_is_a_config_error(tmp_path: Path, body: str, message: str) -> None:
    """A malformed rule file raises ConfigError naming the file and the problem."""
    path = write_rules(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(path)
    assert "rules.toml" in str(info.value)


def test_missing_rule_file_is_a_config_error(tmp_path: Path) -> None:
    """A rule file that cannot be read raises ConfigError, not OSError."""
    with pytest.raises(ConfigError, match="cannot read"):
        Classifier.from_files(tmp_path / "absent.toml")


def test_rule_conditions_all_must_hold() -> None:
    """A rule matches only when its code, enhanced prefix, phase and text conditions all hold."""
    (rule,) = parse_rules({"rule": [{"name": "r", "category": "spam_block", "code": [550, 554],
                                     "enhanced": "5.7.", "phase": ["data"], "text": "SPAM"}]})
    assert rule.matches(550, "5.7.1", "looks like spam", "data", None)
    assert not rule.matches(552, "5.7.1", "looks like spam", "data", None)
    assert not rule.matches(550, "5.1.1", "looks like spam", "data", None)
    assert not rule.matches(550, "5.7.1", "looks like spam", "rcpt", None)
    assert not rule.matches(550, "5.7.1", "looks fine", "data", None)
    assert not rule.matches(550, "5.7.1", "looks like spam", "data", "timeout")


def test_user_rules_win_over_shipped_rules(tmp_path: Path) -> None:
    """Rules from user files are tried before the shipped ones, in the order the files are given."""
    first = write_rules(tmp_path, '[[rule]]\nname = "mine.unknown"\ntext = "user unknown"\n'
                                  'category = "other"\npermanence = "transient"\n', "a.toml")
    second = write_rules(tmp_path, '[[rule]]\nname = "theirs.unknown"\ntext = "user unknown"\n'
                                   'category = "spam_block"\n', "b.toml")
    reply = "550 5.1.1 <u@example.com>... User unknown"
    assert Classifier.default().classify_reply(reply).rule == "invalid_recipient"
    got = Classifier.from_files(first, second).classify_reply(reply)
    assert got == Classification(BounceClass.OTHER, T, "mine.unknown")
    assert Classifier.from_files(second, first).classify_reply(reply).rule == "theirs.unknown"


def test_without_default_rules_only_user_rules_and_fallbacks_apply(tmp_path: Path) -> None:
    """include_default=False drops the shipped rules; unmatched replies fall back to RFC 3463."""
    path = write_rules(tmp_path, '[[rule]]\nname = "only"\ntext = "bananas"\ncategory = "other"\n')
    c = Classifier.from_files(path, include_default=False)
    assert [r.name for r in c.rules] == ["only"]
    assert c.classify(550, "5.7.1", "Relay access denied").rule == "fallback.rfc3463.X.7"


# ------------------------------------------------------------------- every category reachable
REACHABLE = {
    BounceClass.INVALID_RECIPIENT: (550, "5.1.1", "Recipient address rejected: User unknown in local recipient table"),
    BounceClass.MAILBOX_FULL: (552, "5.2.2", "Mailbox full"),
    BounceClass.INACTIVE_MAILBOX: (550, "5.2.1", "The email account that you tried to reach is disabled."),
    BounceClass.SPAM_BLOCK: (554, "5.7.1", "Spam message rejected"),
    BounceClass.POLICY_BLOCK: (550, "5.7.1", "Message rejected due to local policy"),
    BounceClass.REPUTATION_BLOCK: (554, "5.7.1", "Client host [192.0.2.1] blocked using zen.spamhaus.org"),
    BounceClass.RATE_LIMITED: (421, "4.7.28", "mail sent from your IP address has been temporarily rate limited"),
    BounceClass.GREYLISTED: (450, "4.2.0", "Recipient address rejected: Greylisted"),
    BounceClass.MESSAGE_TOO_LARGE: (552, "5.3.4", "Message size exceeds fixed limit"),
    BounceClass.CONTENT_REJECTED: (554, "5.6.0", "Mail message is malformed. Not accepted."),
    BounceClass.AUTH_OR_DMARC_FAILURE: (550, "5.7.26", "Unauthenticated email is not accepted due to DMARC policy"),
    BounceClass.DNS_FAILURE: (450, "4.1.2", "Recipient address rejected: Domain not found"),
    BounceClass.RELAY_DENIED: (554, "5.7.1", "<u@example.net>: Relay access denied"),
    BounceClass.ROUTING_ERROR: (554, "5.4.14", "Hop count exceeded - possible mail loop"),
    BounceClass.TRANSIENT_SERVER_ERROR: (451, "4.3.0", "Mail server temporarily rejected message."),
    BounceClass.PROTOCOL_ERROR: (503, "5.5.1", "RCPT first."),
    BounceClass.OTHER: (554, None, "Transaction failed"),
}


def test_reachable_table_covers_every_category() -> None:
    """The table below names one reply for each of the 17 categories of issue 5."""
    assert set(REACHABLE) == set(BounceClass)


@pytest.mark.parametrize("category", list(BounceClass))
def test_each_category_is_reachable(classifier: Classifier, category: BounceClass) -> None:
    """Each category is produced by the shipped rules (or fallbacks) for a typical reply."""
    code, enhanced, text = REACHABLE[category]
    assert classifier.classify(code, enhanced, text).category is category


# --------------------------------------------------------------------------------- fallbacks
@pytest.mark.parametrize("code, enhanced, category, permanence, rule", [
    (550, "5.1.1", BounceClass.INVALID_RECIPIENT, P, "fallback.rfc3463.X.1"),
    (550, "5.1.6", BounceClass.ROUTING_ERROR, P, "fallback.rfc3463.X.1.6"),
    (553, "5.1.8", BounceClass.POLICY_BLOCK, P, "fallback.rfc3463.X.1.8"),
    (550, "5.2.1", BounceClass.INACTIVE_MAILBOX, P, "fallback.rfc3463.X.2.1"),
    (452, "4.2.2", BounceClass.MAILBOX_FULL, T, "fallback.rfc3463.X.2.2"),
    (552, "5.2.3", BounceClass.MESSAGE_TOO_LARGE, P, "fallback.rfc3463.X.2.3"),
    (552, "5.3.4", BounceClass.MESSAGE_TOO_LARGE, P, "fallback.rfc3463.X.3.4"),
    (451, "4.3.0", BounceClass.TRANSIENT_SERVER_ERROR, T, "fallback.class.4yz"),
    (554, "5.3.0", BounceClass.OTHER, P, "fallback.class.5yz"),
    (451, "4.4.1", BounceClass.TRANSIENT_SERVER_ERROR, T, "fallback.rfc3463.X.4.1"),
    (451, "4.4.3", BounceClass.DNS_FAILURE, T, "fallback.rfc3463.X.4.3"),
    (554, "5.4.4", BounceClass.ROUTING_ERROR, P, "fallback.rfc3463.X.4"),
    (501, "5.5.2", BounceClass.PROTOCOL_ERROR, P, "fallback.rfc3463.X.5"),
    (554, "5.6.1", BounceClass.CONTENT_REJECTED, P, "fallback.rfc3463.X.6"),
    (550, "5.7.1", BounceClass.POLICY_BLOCK, P, "fallback.rfc3463.X.7"),
    (550, "5.0.0", BounceClass.OTHER, P, "fallback.class.5yz"),
    (421, None, BounceClass.TRANSIENT_SERVER_ERROR, T, "fallback.class.4yz"),
    (554, None, BounceClass.OTHER, P, "fallback.class.5yz"),
    (None, "5.1.1", BounceClass.INVALID_RECIPIENT, P, "fallback.rfc3463.X.1"),
    (None, None, BounceClass.OTHER, T, "fallback.no_code"),
])
def test_fallback_by_enhanced_subject_then_class(
    code: int | None, enhanced: str | None, category: BounceClass, permanence: Permanence, rule: str
) -> None:
    """With no rule matching, the RFC 3463 subject decides the category, then the reply class."""
    got = Classifier([]).classify(code, enhanced, "no rule matches this text")
    assert got == Classification(category, permanence, rule)


def test_permanence_follows_the_reply_code_not_the_enhanced_class() -> None:
    """'as_code' permanence comes from the reply code (RFC 5321 §4.2.1) when the two disagree."""
    assert Classifier([]).classify(550, "4.4.7", "QUEUE.Expired; message expired").permanence is P
    assert Classifier([]).classify(454, "5.5.1", "STARTTLS may not be repeated").permanence is T


def test_malformed_enhanced_code_is_ignored(classifier: Classifier) -> None:
    """A caller-supplied enhanced code that is not RFC 3463 syntax is treated as absent."""
    assert classifier.classify(550, "5.x", "no rule matches").rule == "fallback.class.5yz"
    assert classifier.classify(550, "#5.1.1", "no rule matches").rule == "fallback.rfc3463.X.1"


# ---------------------------------------------------------------- STANDARDS B02 and scheduler
@pytest.mark.parametrize("raw, phase", [
    ("552 Too many recipients", "rcpt"),  # RFC 5321 §4.5.3.1.10
    ("552 5.5.3 Too many recipients", "rcpt"),
    ("550 Ip frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725", "mail"),
    ("550 5.7.1 <u@example.com> Too many recipients this hour, please try again later", "rcpt"),  # GoDaddy
    ("550 5.2.121 Recipient's per hour message receive limit from specific sender exceeded", "rcpt"),
    ("554 5.2.122 The recipient has exceeded their limit for the number of messages they can receive per hour",
     "rcpt"),
    ("550 5.7.1 Daily quota exceeded", "mail"),
    ("550 5.4.5 Daily sending quota exceeded. - gsmtp", "mail"),
])
def test_b02_rate_limit_overrides_are_transient(classifier: Classifier, raw: str, phase: str) -> None:
    """5yz replies that are really rate limits classify as rate_limited and transient (B02)."""
    got = classifier.classify_reply(raw, phase)
    assert (got.category, got.permanence) == (BounceClass.RATE_LIMITED, T), got


def test_yahoo_permanent_deferral_is_permanent_despite_421(classifier: Classifier) -> None:
    """Yahoo's 421 "permanently deferred; Retrying will NOT succeed" is a permanent reputation block."""
    got = classifier.classify_reply("421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently "
                                    "deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com")
    assert got == Classification(BounceClass.REPUTATION_BLOCK, P, "yahoo.permanently_deferred")


@pytest.mark.parametrize("raw", [
    "451 4.7.1 Greylisting in action, please come back in 00:05:00",
    "450 4.2.0 <u@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/",
    "451 4.7.1 Try again later",
    "451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451",
])
def test_greylisting_is_recognised(classifier: Classifier, raw: str) -> None:
    """Greylisting replies classify as greylisted/transient, which the scheduler retries soon."""
    got = classifier.classify_reply(raw, "rcpt")
    assert (got.category, got.permanence) == (BounceClass.GREYLISTED, T)


def test_try_again_later_with_other_text_is_not_greylisting(classifier: Classifier) -> None:
    """A 451 4.7.0 "Temporary server error. Please try again later" is server trouble, not greylisting."""
    got = classifier.classify_reply("451 4.7.0 Temporary server error. Please try again later. PRX4", "rcpt")
    assert got.category is BounceClass.TRANSIENT_SERVER_ERROR


def test_gmail_rate_limit_for_missing_auth_is_an_auth_failure(classifier: Classifier) -> None:
    """Gmail 4.7.26 says "rate limited" but slowing down cannot fix missing SPF/DKIM."""
    got = classifier.classify_reply("421 4.7.26 This mail has been rate limited because it is unauthenticated.")
    assert (got.category, got.permanence) == (BounceClass.AUTH_OR_DMARC_FAILURE, T)


def test_phase_changes_the_meaning_of_the_same_reply(classifier: Classifier) -> None:
    """5.1.x at MAIL is about our sender address; at RCPT it is the recipient (STANDARDS B06)."""
    raw = "550 5.1.0 Address rejected"
    assert classifier.classify_reply(raw, "rcpt").category is BounceClass.INVALID_RECIPIENT
    assert classifier.classify_reply(raw, "mail").category is BounceClass.POLICY_BLOCK
    assert classifier.classify_reply("554 Transaction failed", "connect").category is BounceClass.POLICY_BLOCK
    assert classifier.classify_reply("554 Transaction failed", "data").category is BounceClass.OTHER


# ----------------------------------------------------------------------------------- local causes
@pytest.mark.parametrize("cause, category, permanence", [
    ("dns_nxdomain", BounceClass.DNS_FAILURE, P),
    ("null_mx", BounceClass.DNS_FAILURE, P),
    ("dns_servfail", BounceClass.DNS_FAILURE, T),
    ("connect_failed", BounceClass.ROUTING_ERROR, T),
    ("timeout", BounceClass.TRANSIENT_SERVER_ERROR, T),
    ("tls_failed", BounceClass.TRANSIENT_SERVER_ERROR, T),
    ("connection_lost", BounceClass.TRANSIENT_SERVER_ERROR, T),
])
def test_local_causes(classifier: Classifier, cause: str, category: BounceClass, permanence: Permanence) -> None:
    """Failures seen locally map to a category and permanence without any reply."""
    got = classifier.classify(None, None, "", local_cause=cause)
    assert got == Classification(category, permanence, f"local.{cause}")


def test_local_cause_table_is_complete(classifier: Classifier) -> None:
    """Every documented local cause has a shipped rule; an unknown one falls back to transient."""
    covered = set().union(*(r.local_causes for r in classifier.rules if r.local_causes))
    assert covered == LOCAL_CAUSES
    got = classifier.classify(None, None, "", local_cause="cosmic_ray")
    assert got == Classification(BounceClass.TRANSIENT_SERVER_ERROR, T, "fallback.local")


def test_local_cause_ignores_reply_rules(classifier: Classifier) -> None:
    """Reply-text rules never apply to a local cause, whatever text accompanies it."""
    got = classifier.classify(None, None, "User unknown", local_cause="timeout")
    assert got.rule == "local.timeout"


# ----------------------------------------------------------------------------- raw replies
def test_multiline_reply_joins_lines_and_drops_repeated_codes(classifier: Classifier) -> None:
    """A phrase split across lines of a multi-line reply still matches ("rate\\n421 4.7.28 limited")."""
    raw = ("421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited\r\n"
           "421-4.7.28 mail originating from your IP address. To protect our users from spam,\r\n"
           "421-4.7.28 mail sent from your IP address has been temporarily rate\r\n"
           "421 4.7.28 limited. - gsmtp\r\n")
    assert classifier.classify_reply(raw, "data") == Classification(BounceClass.RATE_LIMITED, T, "rate_limited")


def test_multiline_gmail_unknown_user(classifier: Classifier) -> None:
    """Gmail's four-line 550-5.1.1 reply, without a final newline, is an invalid recipient."""
    raw = ("550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
           "550-5.1.1 double-checking the recipient's email address for typos or\n"
           "550-5.1.1 unnecessary spaces. For more information, go to\n"
           "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser - gsmtp")
    assert classifier.classify_reply(raw, "rcpt") == Classification(BounceClass.INVALID_RECIPIENT, P,
                                                                    "invalid_recipient")


@pytest.mark.parametrize("raw, category, permanence", [
    ("smtp; 550 5.1.1 <u@example.com>... User unknown", BounceClass.INVALID_RECIPIENT, P),  # DSN form
    ("550-5.1.1 first line\n551 5.1.1 user unknown", BounceClass.INVALID_RECIPIENT, P),  # codes differ
    ("  452 4.5.3 too many recipients  ", BounceClass.RATE_LIMITED, T),
    ("no code at all", BounceClass.OTHER, T),
    ("", BounceClass.OTHER, T),
])
def test_unparseable_replies_fall_back_to_a_regex(
    classifier: Classifier, raw: str, category: BounceClass, permanence: Permanence
) -> None:
    """Replies the strict parser refuses are still classified from a tolerant code/enhanced regex."""
    got = classifier.classify_reply(raw)
    assert (got.category, got.permanence) == (category, permanence)


def test_paren_enhanced_code_is_used_when_none_leads(classifier: Classifier) -> None:
    """A trailing "(#5.1.1)" (qmail, Symantec.cloud) counts as the enhanced code."""
    assert Classifier([]).classify_reply("550-Invalid recipient <u@example.com>\n550 (#5.1.1)").rule \
        == "fallback.rfc3463.X.1"


@settings(max_examples=300, deadline=None)
@given(code=st.one_of(st.none(), st.integers(200, 599)), text=st.text(max_size=300),
       phase=st.sampled_from([None, "connect", "mail", "rcpt", "data"]))
def test_classify_never_raises(code: int | None, text: str, phase: str | None) -> None:
    """Any code and any reply text yields a Classification (reply text is untrusted input)."""
    c = Classifier.default()
    assert isinstance(c.classify(code, None, text, phase), Classification)
    assert isinstance(c.classify_reply(text, phase), Classification)
    assert isinstance(c.classify_reply(f"{code or 550}-{text}\n{code or 550} {text}", phase), Classification)


def test_cache_does_not_change_answers() -> None:
    """A cached and an uncached classifier give the same answer for every corpus reply."""
    cached, uncached = Classifier.default(), Classifier(Classifier.default().rules, cache_size=0)
    for row in load_corpus():
        assert cached.classify_reply(row["reply"], row["phase"]) == uncached.classify_reply(row["reply"], row["phase"])
        assert cached.classify_reply(row["reply"], row["phase"]) == uncached.classify_reply(row["reply"], row["phase"])


# ---------------------------------------------------------------------------------- corpus
def load_corpus() -> list[dict[str, str]]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def test_corpus_is_well_formed() -> None:
    """The corpus has ≥ 150 distinct replies, each labelled with a valid category, permanence and source."""
    rows = load_corpus()
    assert len(rows) >= 150
    assert len({r["reply"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"reply", "phase", "category", "permanence", "source"}, row
        assert BounceClass(row["category"]) and Permanence(row["permanence"])
        assert row["phase"] in (None, "connect", "ehlo", "mail", "rcpt", "data"), row
        assert ":" in row["source"] and len(row["source"]) > 10, row


def test_corpus_agreement(classifier: Classifier, record_property: pytest.RecordProperty) -> None:
    """The shipped rules agree with the hand labels on ≥ 90% of categories and ≥ 97% of permanences."""
    rows = load_corpus()
    wrong_category, wrong_permanence = [], []
    for row in rows:
        got = classifier.classify_reply(row["reply"], row["phase"])
        line = (f"  [{row['source'].split(':')[0]}] label {row['category']}/{row['permanence']} "
                f"got {got.category}/{got.permanence} via {got.rule}: {row['reply'][:100]!r}")
        if got.category != row["category"]:
            wrong_category.append(line)
        if got.permanence != row["permanence"]:
            wrong_permanence.append(line)
    n = len(rows)
    category_rate, permanence_rate = 1 - len(wrong_category) / n, 1 - len(wrong_permanence) / n
    summary = (f"bounce corpus: {n} replies, {len(Counter(r['source'].split(':')[0] for r in rows))} sources; "
               f"category agreement {category_rate:.1%}, permanence agreement {permanence_rate:.1%}")
    print(summary)
    record_property("corpus_size", n)
    record_property("category_agreement", round(category_rate, 4))
    record_property("permanence_agreement", round(permanence_rate, 4))
    details = "\n".join([summary, "category disagreements:", *wrong_category,
                         "permanence disagreements:", *wrong_permanence])
    assert category_rate >= 0.90, details
    assert permanence_rate >= 0.97, details


# ------------------------------------------------------------------------------------- CLI
def run_cli(lines: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mta_engine.dsn.classify_cli", *args],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=REPO,
                          timeout=60, check=False)


def test_cli_classifies_json_lines_and_reports_bad_lines() -> None:
    """`classify` writes one JSON line per input, echoes ids, reports malformed lines and exits 0."""
    lines = [
        json.dumps({"id": "a1", "reply": "550-5.1.1 The email account that you tried to reach does not exist.\n"
                                         "550 5.1.1 gsmtp", "phase": "rcpt"}),
        "{not json",
        json.dumps({"code": 552, "enhanced": None, "text": "Too many recipients"}),
        "",
        json.dumps({"id": 7, "code": "550"}),
        json.dumps({"local_cause": "null_mx"}),
    ]
    proc = run_cli(lines)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0] == {"id": "a1", "category": "invalid_recipient", "permanence": "permanent",
                      "rule": "invalid_recipient"}
    assert out[1]["error"].startswith("line 2: ")
    assert out[2] == {"category": "rate_limited", "permanence": "transient", "rule": "too_many_recipients"}
    assert out[3]["id"] == 7 and out[3]["error"].startswith("line 5: `code`")
    assert out[4] == {"category": "dns_failure", "permanence": "permanent", "rule": "local.null_mx"}
    assert len(out) == 5


def test_cli_user_rules_and_bad_rule_file(tmp_path: Path) -> None:
    """--rules files win over the shipped rules; an unusable rule file exits 2 with a message."""
    good = write_rules(tmp_path, '[[rule]]\nname = "ops.override"\ntext = "user unknown"\n'
                                 'category = "other"\n', "good.toml")
    proc = run_cli([json.dumps({"reply": "550 5.1.1 User unknown"})], "--rules", str(good))
    assert json.loads(proc.stdout)["rule"] == "ops.override"
    proc = run_cli([json.dumps({"reply": "550 5.7.1 Relay access denied"})], "--rules", str(good),
                   "--no-default-rules")
    assert json.loads(proc.stdout)["rule"] == "fallback.rfc3463.X.7"
    bad = write_rules(tmp_path, '[[rule]]\nname = "x"\ncategory = "bogus"\n', "bad.toml")
    proc = run_cli([], "--rules", str(bad))
    assert proc.returncode == 2 and "bad.toml" in proc.stderr and proc.stdout == ""


# --------------------------------------------------------------- literal pre-check (speed only)
def _corpus_texts() -> list[str]:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    return [_split_raw(row["reply"])[2].casefold() for row in rows]


def test_literal_precheck_never_changes_a_rule_match() -> None:
    """The ``lit in text`` shortcut answers exactly as the rule's regex on every corpus text."""
    texts = _corpus_texts()
    checked = 0
    for rule in _default_rules():
        if rule.folded is None:
            continue
        search = _search_of(rule)
        assert search is not None
        for text in texts:
            assert (search(text) is None) == (rule.folded.search(text) is None), (rule.name, text)
            checked += 1
    assert checked > 1000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["mailbox ", "full", "over", " quota", "is ", "rate", " limit", "greylist",
                                 "grey-list", "try again", " later", "user unknown", "x", " ", "5.1.1",
                                 "spam", "blocked", "(s3150)", "rfc 5322 compliant", "dmarc"]), max_size=8))
def test_literal_precheck_agrees_with_regex_on_generated_text(parts: list[str]) -> None:
    text = "".join(parts)
    for rule in _default_rules():
        if rule.folded is not None:
            search = _search_of(rule)
            assert search is not None
            assert (search(text) is None) == (rule.folded.search(text) is None), (rule.name, text)


def test_required_literals_of_simple_patterns() -> None:
    assert _required_literals(re.compile("mailbox (is )?full|over ?quota")) == ("mailbox ", "quota")
    assert _required_literals(re.compile("gr[ae]y-?list|ab")) is None  # "ab" is too short to help
    assert _required_literals(re.compile(r"\bspf\b")) == ("spf",)
