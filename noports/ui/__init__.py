"""``noports ui``: the desktop app's job as a local web app (issue 13).

Served by aiohttp on loopback from the same process that runs the tunnels (so tunnels outlive
the browser tab); server-rendered Jinja2 pages, a vendored pinned htmx, server-sent events for
live tunnel state. Imported only when ``noports ui`` runs; needs ``pip install 'noports[ui]'``.
"""

HTMX_FILE = "htmx-2.0.4.min.js"
HTMX_SHA256 = "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"
