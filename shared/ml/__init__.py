"""The ML pieces more than one service needs: answer matching, preference rows and pair selection,
log-probabilities and implicit reward. Below the services, so no service imports another."""
