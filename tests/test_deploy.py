"""The deploy workflow builds what the README documents and publishes where the links point."""

import re
from pathlib import Path

import pytest
import yaml

from flatness.book import build

ROOT = Path(__file__).resolve().parents[1]


def workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())


def test_the_workflow_builds_with_the_readme_make_target_and_publishes_the_html():
    flow = workflow()
    assert flow[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads the key "on" as True
    steps = flow["jobs"]["book"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("### Deploying the book") :]
    documented = re.findall(r"`(make [^`]*)`", deploy)
    assert documented and runs == documented[:1]
    target = documented[0].split()[1]
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{target}: .*\n\t(.*)$", makefile, re.M)
    assert target == "site" and "--best-evidence" in recipe.group(1)
    publish = next(s for s in steps if s.get("uses", "").startswith("peaceiris/actions-gh-pages"))
    assert publish["with"]["publish_dir"] == "_build/html"
    assert publish["with"]["publish_branch"] == build.PAGES_BRANCH


def test_the_colab_link_and_install_cell_come_from_the_configured_repository(tmp_path):
    away = build.TakeAway.of("logreg", "cpu", ROOT)
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_name = url.removeprefix("https://github.com/")
    assert away.colab == (
        f"https://colab.research.google.com/github/{owner_name}/blob/gh-pages/"
        "_sources/book/logreg.ipynb"
    )
    assert f"git+{url}" in away.install_cell()
    compile(away.install_cell().replace("get_ipython()", "print"), "cell", "exec")
    assert away.command == "python -m flatness chapter logreg --profile cpu"
    (tmp_path / "_config.yml").write_text("repository:\n  url: not a repository\n")
    try:
        build.TakeAway.of("logreg", "cpu", tmp_path)
    except build.FlatnessError as err:
        assert "repository.url" in str(err) and "https://github.com/OWNER/NAME" in str(err)
    else:
        raise AssertionError("a repository.url that is no GitHub repository was accepted")


def test_a_repository_url_is_read_as_github_reads_it_or_refused(tmp_path):
    def away(text: str | None):
        if text is not None:
            (tmp_path / "_config.yml").write_text(text)
        return build.TakeAway.of("logreg", "cpu", tmp_path)

    assert away("repository:\n  url: https://github.com/o/n.git/\n").repository == (
        "https://github.com/o/n"
    )
    for text in (
        "repository:\n  url: https://github.com/../..\n",
        "repository: https://github.com/o/n\n",
        "- a list\n",
        "repository:\n  url: http://github.com/o/n\n",
    ):
        with pytest.raises(build.FlatnessError, match="repository.url"):
            away(text)
    (tmp_path / "_config.yml").unlink()
    with pytest.raises(build.FlatnessError, match="cannot read"):
        away(None)


def test_a_best_evidence_verdict_page_says_its_profiles_and_re_executes_with_them():
    import shlex

    at = {"theory": "paper", "logreg": "paper", "cnn": "cpu"}
    away = build.TakeAway.of("verdicts", "cpu", ROOT, at)
    words = shlex.split(away.command)
    assert words[:6] == ["python", "-m", "flatness", "chapter", "verdicts", "--profile"]
    assert words[7] == "-y" and yaml.safe_load(words[8]) == {"chapter_profiles": at}
    assert "**paper** for theory, logreg; **cpu** for cnn" in away.box()
    # one profile throughout: nothing to add
    same = build.TakeAway.of("verdicts", "cpu", ROOT, {"cnn": "cpu"})
    assert same.command == "python -m flatness chapter verdicts --profile cpu"
    assert "This page shows the **cpu** profile." in same.box()
