"""Nodes that dial out: the gateway's hub, the frames over one WebSocket, the node agent."""
