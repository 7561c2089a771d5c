"""Print the first ```bash block under a README heading (CI runs the README's commands verbatim)."""
import re
import sys

path, heading = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
match = re.search(rf"^#+ {re.escape(heading)}.*?^```bash\n(.*?)^```", text, re.S | re.M)
if not match:
    sys.exit(f"{path}: no ```bash block under a heading '{heading}'")
print(match.group(1).strip())
