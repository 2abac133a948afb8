import Alert from '@mui/material/Alert';
import Button from '@mui/material/Button';
import Snackbar from '@mui/material/Snackbar';
import { createContext, useCallback, useContext, useState, type ReactNode } from 'react';

interface Note {
  key: number;
  message: string;
  severity: 'success' | 'info' | 'warning' | 'error';
  action?: { label: string; onClick: () => void };
}
type Notify = (message: string, severity?: Note['severity'], action?: Note['action']) => void;
const NotifyContext = createContext<Notify>(() => undefined);

export function NotifyProvider({ children }: { children: ReactNode }) {
  const [note, setNote] = useState<Note | null>(null);
  const [open, setOpen] = useState(false);
  const notify = useCallback<Notify>((message, severity = 'info', action) => {
    setNote({ key: Date.now(), message, severity, action });
    setOpen(true);
  }, []);
  return (
    <NotifyContext.Provider value={notify}>
      {children}
      <Snackbar
        key={note?.key}
        open={open}
        autoHideDuration={note?.action ? 12000 : note?.severity === 'error' ? 8000 : 4000}
        onClose={(_e, reason) => reason !== 'clickaway' && setOpen(false)}
        anchorOrigin={{ vertical: 'bottom', horizontal: 'center' }}
      >
        <Alert
          severity={note?.severity ?? 'info'}
          variant="filled"
          onClose={() => setOpen(false)}
          data-testid="snackbar"
          action={
            note?.action ? (
              <Button
                color="inherit"
                size="small"
                onClick={() => {
                  setOpen(false);
                  note.action!.onClick();
                }}
              >
                {note.action.label}
              </Button>
            ) : undefined
          }
          sx={{ width: '100%', alignItems: 'center' }}
        >
          {note?.message}
        </Alert>
      </Snackbar>
    </NotifyContext.Provider>
  );
}

export function useNotify(): Notify {
  return useContext(NotifyContext);
}
