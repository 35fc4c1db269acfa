import asyncio

from rtdecode.pipeline import END, LatestSlot


def test_newest_wins_and_drops_are_counted():
    async def main():
        dropped = []
        slot = LatestSlot(dropped.append)
        slot.put(1)
        slot.put(2)  # 1 was never taken: dropped
        assert await slot.get() == 2
        slot.put(3)
        slot.close()  # closing keeps the waiting item
        assert await slot.get() == 3
        assert await slot.get() is END
        return dropped

    assert asyncio.run(main()) == [1]


def test_get_waits_for_an_item():
    async def main():
        slot = LatestSlot(lambda _: None)
        task = asyncio.create_task(slot.get())
        await asyncio.sleep(0.01)
        assert not task.done()
        slot.put("x")
        return await task

    assert asyncio.run(main()) == "x"
