"""Report output: the machine description and markdown tables of RESULTS.md."""

import datetime
import os
import platform

import jax


def machine_description() -> str:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  versions = []
  for pkg in ("jax", "jaxlib", "optax", "distrax", "numpyro", "blackjax",
              "tfp-nightly", "inference-gym"):
    try:
      versions.append(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
      pass
  dev = jax.devices()[0]
  return (f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
          f"- machine: {cpu}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}, Python "
          f"{platform.python_version()}\n"
          f"- JAX device: {dev.platform} ({dev.device_kind}); XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '(unset)')}\n"
          f"- versions: {', '.join(versions)}\n")


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(x) for x in r) + " |")
  return "\n".join(lines)


def _fmt(x) -> str:
  if isinstance(x, float):
    if x != x:
      return "nan"
    if abs(x) >= 100:
      return f"{x:.1f}"
    if abs(x) >= 1:
      return f"{x:.3f}"
    return f"{x:.4f}"
  return str(x)


def kept_sections(path: str, new_text: str) -> str:
  """The `## ` sections of the RESULTS.md at `path` that `new_text` does not
  hold (written by other benchmarks, e.g. `benchmarks.auto_accuracy`), to
  append after the regenerated ones."""
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    old = f.read()
  ours = {line for line in new_text.splitlines() if line.startswith("## ")}
  kept = []
  for part in old.split("\n## ")[1:]:
    title = "## " + part.split("\n", 1)[0]
    if title not in ours:
      kept.append("\n## " + part.rstrip("\n") + "\n")
  return "".join(kept)
