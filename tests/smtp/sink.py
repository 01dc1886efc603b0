"""A real SMTP server for the alert tests (aiosmtpd), not a mock of our mailer.

Usage: python sink.py HOST PORT FOLDER
Prints "ready" once listening; stores every accepted message as FOLDER/<uuid>.json with the envelope, the headers,
the decoded plain-text and HTML bodies, and the raw message.
"""

import asyncio
import email
import json
import os
import sys
import uuid
from email import policy

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, folder):
        self.folder = folder

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else "",
            "raw": envelope.content.decode("utf-8", "replace"),
        }
        name = uuid.uuid4().hex
        tmp = os.path.join(self.folder, f".{name}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        # Atomic: readers never see half a message.
        os.rename(tmp, os.path.join(self.folder, f"{name}.json"))
        return "250 OK"


async def main(host, port, folder):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink(folder), hostname="localhost"), host, port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
