# The tutorial's broadcast (section 7.1) seen from two of its clients, each
# on a different Relay node: what one sends, the other receives.
# usage: broadcast.py URL_A URL_B
import asyncio
import sys

import websockets


async def main(url_a, url_b):
    async with websockets.connect(url_a) as a, websockets.connect(url_b) as b:
        await a.send("Hello from A")
        print(f"B received: {await asyncio.wait_for(b.recv(), 10)}")
        await b.send("Hello from B")
        print(f"A received: {await asyncio.wait_for(a.recv(), 10)}")


asyncio.run(main(sys.argv[1], sys.argv[2]))
