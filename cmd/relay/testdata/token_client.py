# The tutorial's authentication (section 7.2) from the client side: the token
# goes in the Authorization header of the handshake.
# usage: token_client.py URL TOKEN  (TOKEN "-" sends no header)
# prints "accepted: <echo reply>" or "refused: <HTTP status>"
import asyncio
import inspect
import sys

import websockets


def header_kw():
    # websockets 10-13 call it extra_headers, 14+ additional_headers.
    params = inspect.signature(websockets.connect).parameters
    return "additional_headers" if "additional_headers" in params else "extra_headers"


async def main(url, token):
    headers = {} if token == "-" else {"Authorization": token}
    try:
        async with websockets.connect(url, **{header_kw(): headers}) as ws:
            await ws.send("Hello, Server!")
            print(f"accepted: {await asyncio.wait_for(ws.recv(), 10)}")
    except Exception as e:  # InvalidStatusCode (<14) or InvalidStatus (14+)
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        if status is None:
            raise
        print(f"refused: {status}")


asyncio.run(main(sys.argv[1], sys.argv[2]))
