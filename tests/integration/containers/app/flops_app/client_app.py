"""Fixture ClientApp: trains the user's Net one step on generated data."""

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    import task

    net = task.Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    task.train_one_step(net)
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict())}), reply_to=msg)
